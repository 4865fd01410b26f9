# The two commands: `make demo` runs the platform on the embedded stack, `make test` runs the tests.
# Both create the virtualenv and install everything on first use.
VENV ?= .venv
DURATION ?=
DEMO_ARGS ?=
BENCH_ARGS ?= --embedded

.PHONY: demo test bench lint setup

setup:
	@./scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/iotlink demo $(if $(DURATION),--duration $(DURATION)) $(DEMO_ARGS)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q --durations=15 tests

bench: setup
	$(VENV)/bin/iotlink bench $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
