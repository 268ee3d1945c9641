# zimage-dagster: every target works on a fresh clone with only Python 3.10+, pip and make
# (`make test` also needs Debian's chromium and postgresql: it installs them when run as root).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: `make demo` / `make dev` install only what they run (the project's runtime
# dependencies and the Dagster UI: the `demo` dependency group); `make test` adds the `dev` group.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
CONSTRAINTS := requirements/constraints.txt
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
INSTALL := $(PIP) install --no-compile
PYTEST_ARGS ?=
# `make pytest` runs the suite on this many pytest-xdist workers, more than the 2 cores of CI: most
# tests wait (latencies, daemons, subprocesses starting) rather than compute. tests/conftest.py
# groups what must stay together and keeps the `heavy` tests to one lane per core.
# PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 4

.PHONY: help install lint format typecheck doctest pytest test system-packages demo dev emulator bench soak compat lock clean

help:
	@echo "make test   - install (first time) then ruff, mypy, doctest and pytest (on $(PYTEST_WORKERS) workers)"
	@echo "make demo   - generate the example images against the embedded emulator (or the real API with ZIMAGE_API_KEY)"
	@echo "make dev    - the Dagster UI on http://127.0.0.1:3000 with the emulator running"
	@echo "make bench  - benchmarks; figures go to benchmarks/results/"
	@echo "make compat - the built wheel in fresh venvs with the oldest and newest supported Dagster"
	@echo "make lock   - re-pin $(CONSTRAINTS) from the current environment"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's declared or pinned dependencies change. pip >= 25.1 reads
# dependency groups (`--group`); setuptools without known CVEs (requirements/venv-tools.txt).
$(RUN_STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS) requirements/venv-tools.txt
	$(PIP) install --upgrade -r requirements/venv-tools.txt
	$(INSTALL) -c $(CONSTRAINTS) -e . --group demo
	touch $(RUN_STAMP)

$(DEV_STAMP): $(RUN_STAMP)
	$(INSTALL) -c $(CONSTRAINTS) --group dev
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

# Debian's chromium (the UI test) and postgresql (the production-shaped reliability tests):
# installed when missing and run as root, else the one command to run is printed.
system-packages:
	@bash requirements/system-packages.sh

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# Every public example in the package's docstrings runs (none is skipped without a reason).
doctest: $(DEV_STAMP)
	$(BIN)/pytest --doctest-modules zimage_dagster -q -p no:cacheprovider

pytest: $(DEV_STAMP) system-packages
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# ruff, mypy and the doctests run beside pytest (half a minute of wall saved); pytest's output
# comes as it runs, theirs (each part whole) after it. Fails when any part fails.
test: system-packages $(DEV_STAMP)
	@log=$$(mktemp); \
	$(MAKE) --no-print-directory --keep-going --jobs=3 --output-sync=target \
		lint typecheck doctest > $$log 2>&1 & checks=$$!; \
	$(MAKE) --no-print-directory pytest; tests=$$?; \
	wait $$checks; checked=$$?; \
	echo "---- lint, typecheck, doctest ----"; cat $$log; rm -f $$log; \
	if [ $$checked -ne 0 ]; then echo "make test: lint, typecheck or doctest failed (above)"; fi; \
	if [ $$tests -ne 0 ]; then echo "make test: pytest failed (exit $$tests, its summary above)"; fi; \
	[ $$checked -eq 0 ] && [ $$tests -eq 0 ]

demo: $(RUN_STAMP)
	$(BIN)/python -m examples.demo

dev: $(RUN_STAMP)
	$(BIN)/python -m examples.dev

emulator: $(RUN_STAMP)
	$(BIN)/zimage-emulator --host 127.0.0.1 --port 8765

bench: $(DEV_STAMP)
	$(BIN)/python -m benchmarks.run

soak: $(DEV_STAMP) system-packages
	$(BIN)/pytest -m soak --timeout 3600 $(PYTEST_ARGS)

# The built wheel (no dev group) in fresh venvs with the floor and the newest Dagster: import,
# emulator, 3 partitions materialized by the README's definitions.py, the component's dg check defs.
compat: $(DEV_STAMP)
	$(BIN)/pytest -m compat -p no:cacheprovider tests/packaging $(PYTEST_ARGS)

lock: $(DEV_STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^zimage-dagster' > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache zimage_output
