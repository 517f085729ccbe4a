# make install: build .venv with the package (editable) and its test tools
# make test:    the whole suite (builds .venv first when needed)
# make test-fast: the suite without the tests marked slow (a minute or two)
# make demo:    a smartsink on loopback, trafficgen against it for ten seconds, the report
# make bench:   trafficgen and smartsink side by side with Postfix's smtp-source and smtp-sink, by wall clock and CPU
# make bench-scale: memory per held connection (1,000-20,000) and throughput from 10 to 20,000 connections
# make bench-reload: big policies (10,000 and 150,000 domains): load time, an edit in force, SMTP probes meanwhile
# make soak:    smartsink for 10 minutes under normal mail and hostile clients, watched for growth (SOAK_ARGS=--minutes 2)
# make lint:    ruff, mypy --strict, radon (no function rated D), docs/cli.md's option tables current
# make docs:    rewrite docs/cli.md's option tables from the options' declarations
# make vendor-plotly: fetch the HTML report's charting bundle (npm's plotly.js-basic-dist-min) into trafficgen/stats/vendor/

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench bench-scale bench-reload soak lint docs vendor-plotly clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-scale: $(STAMP)
	$(BIN)/python -m bench --scale $(BENCH_ARGS)

bench-reload: $(STAMP)
	$(BIN)/python -m bench.reload $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/radon cc -n D -s mailload smartsink trafficgen bench
	$(BIN)/python -m pytest -q tests/mailload/test_options.py tests/test_architecture.py

docs: $(STAMP)
	$(BIN)/python scripts/cli_tables.py docs/cli.md

vendor-plotly:
	sh scripts/vendor-plotly.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
