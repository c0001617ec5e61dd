# Two commands: `make demo` (set up .venv and run the main job, `comal demo`) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/comal demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

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
