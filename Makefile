# Two commands set up and run everything on a fresh machine:
#   make demo   -> creates .venv if missing, installs, runs the offline demo
#   make test   -> creates .venv if missing, installs, runs the test suite (plain, then type-checked)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-plain test-typecheck lint typecheck bench install browser mutants

$(STAMP): pyproject.toml requirements-ci.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-ci.txt
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) browser

# Headless Chromium (Debian's package) for the attention-view tests, which skip only when it is absent.
# Installed with apt-get as root (or passwordless sudo); under CI=true a missing browser is an error.
APT := env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0
browser:
	@if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo"; else SUDO=none; fi; \
	if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the attention-view tests..."; \
		$$SUDO $(APT) install chromium >/dev/null 2>&1 || \
		{ $$SUDO $(APT) update >/dev/null 2>&1; $$SUDO $(APT) install chromium >/dev/null 2>&1; } || true; \
	fi; \
	if ! command -v chromium >/dev/null 2>&1; then \
		echo "WARNING: chromium is not installed (needs apt-get as root); the attention-view browser tests will be skipped" >&2; \
		if [ "$$CI" = true ]; then echo "error: CI must run the browser tests; install chromium" >&2; exit 1; fi; \
	fi

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/encoderlens demo

# The whole suite twice (what CI runs): as users run the code, then with jaxtyping + beartype checking every
# annotation of encoderlens at run time (TransformerLens's own test setting): annotations and shapes must be
# what the code passes and returns. Each half alone: make test-plain, make test-typecheck.
test: test-plain test-typecheck

test-plain: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-typecheck: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --jaxtyping-packages=encoderlens,beartype.beartype

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src/encoderlens

# Not in CI: apply each plausible one-line bug of tools/mutants.py and report the ones no test catches
# (MUTANTS_ARGS=--full runs the whole suite per mutation).
mutants: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python tools/mutants.py $(MUTANTS_ARGS)

# One thread, process CPU time, ours and HF interleaved in one process (steady on a shared machine;
# on an idle one CPU time equals elapsed time). BENCH_ARGS="--threads 2 --clock wall" for elapsed time.
BENCH_ARGS ?= --threads 1 --clock cpu --repeats 11
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

check: lint typecheck test
