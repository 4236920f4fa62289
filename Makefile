# citylake: `make demo` runs the whole pipeline on the reference city, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SCALE ?= 10

.PHONY: install demo test dev lint bench clean

install: $(VENV)/.installed

# requirements.lock pins every package to the versions CI runs (all from PyPI, installable offline
# from a local mirror); pyproject.toml says what citylake needs.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

demo: install
	$(BIN)/citylake demo

test: install
	$(BIN)/pytest

dev: install
	$(BIN)/citylake dev

lint: install
	$(BIN)/ruff check orchestration tests

clean:
	rm -rf lake .citylake reference_city test-output
