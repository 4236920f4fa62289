# citylake: `make demo` runs the whole pipeline on the reference city, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SCALE ?= 10
# test processes (pytest-xdist): one per core by default; TEST_WORKERS=0 runs the tests in this process
TEST_WORKERS ?= auto

.PHONY: install browser demo test dev lint bench bench-scaleout clean

install: $(VENV)/.installed

# requirements.lock pins every package to the versions CI runs (all from PyPI, installable offline
# from a local mirror); pyproject.toml says what citylake needs.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

demo: install
	$(BIN)/citylake demo

# the indicator report's test renders it in headless Chromium: installed from Debian when missing and
# possible (root with apt-get, as in CI); elsewhere that one test is skipped and says why
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed: the indicator report's browser test will be skipped"

test: install browser
	$(BIN)/pytest -n $(TEST_WORKERS) --durations=25

dev: install
	$(BIN)/citylake dev

lint: install
	$(BIN)/ruff check orchestration tests

# Benchmark (not part of `make test`): the pipeline against the plain-SQL floor and pandas at SCALE, a year of
# history; writes benchmarks/RESULTS.md and ends with one summary line. Takes many minutes at SCALE=10.
# BENCH_ARGS passes more options, e.g. BENCH_ARGS='--repeat 3 --profile --keep'.
# BENCH_SERIES: further scales at which (a) and (b) run once more (how cost grows with size); empty to skip.
BENCH_SERIES ?= 30
bench: install
	$(BIN)/python -m benchmarks.run --scale $(SCALE) $(if $(strip $(BENCH_SERIES)),--series $(BENCH_SERIES)) $(BENCH_ARGS)

# Scale-out figures (not part of `make bench`): the reference city at SCALEOUT_SCALE, its first full run in
# process, on one and two Celery workers (local RabbitMQ) and with the lake on S3 (SeaweedFS on loopback);
# writes benchmarks/SCALEOUT.md (SCALEOUT_ARGS, e.g. "--work DIR"). About four full runs' time (at scale 30, half an hour or more).
SCALEOUT_SCALE ?= 30
bench-scaleout: install
	$(BIN)/python -m benchmarks.scaleout --scale $(SCALEOUT_SCALE) $(SCALEOUT_ARGS)

clean:
	rm -rf lake .citylake reference_city test-output cities/*/lake cities/*/.citylake cities/riverton/reference_city
