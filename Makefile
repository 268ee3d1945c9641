# zimage-dagster: every target works on a fresh clone with only Python 3.10+, pip and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
PYTEST_ARGS ?=

.PHONY: help install lint format typecheck doctest pytest test demo dev emulator bench soak lock clean

help:
	@echo "make test   - install (first time) then ruff, mypy and pytest"
	@echo "make demo   - generate the example images against the embedded emulator (or the real API with ZIMAGE_API_KEY)"
	@echo "make dev    - the Dagster UI on http://127.0.0.1:3000 with the emulator running"
	@echo "make bench  - benchmarks; figures go to benchmarks/results/"
	@echo "make lock   - re-pin $(CONSTRAINTS) from the current environment"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's declared or pinned dependencies change.
$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

# Every public example in the package's docstrings runs (none is skipped without a reason).
doctest: $(STAMP)
	$(BIN)/pytest --doctest-modules zimage_dagster -q -p no:cacheprovider

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck doctest pytest

demo: $(STAMP)
	$(BIN)/python -m examples.demo

dev: $(STAMP)
	$(BIN)/python -m examples.dev

emulator: $(STAMP)
	$(BIN)/zimage-emulator --host 127.0.0.1 --port 8765

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

soak: $(STAMP)
	$(BIN)/pytest -m soak $(PYTEST_ARGS)

lock: $(BIN)/python
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^zimage-dagster' > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache zimage_output
