# make install: build .venv with the package (editable) and its test tools, and compile the hot modules with mypyc
#               where a C compiler and Python's headers exist (else pure Python, said so; MAILLOAD_PURE=1 forces it)
# make pure:    remove the compiled modules: the same code, pure Python (make install compiles them again)
# make test:    the whole suite (builds .venv first when needed)
# make test-fast: the suite without the tests marked slow (about 8 minutes on 2 cores; the whole suite about 15)
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

.PHONY: install pure test test-fast demo bench bench-scale bench-reload soak lint docs vendor-plotly clean

# Compiling again only when a compiled module is older than its source (a compiled module shadows its .py).
install: $(STAMP)
	$(BIN)/python scripts/native.py build

# The editable install itself is pure Python (MAILLOAD_PURE=1 for setup.py); scripts/native.py compiles in place.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	MAILLOAD_PURE=1 $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

pure: $(STAMP)
	$(BIN)/python scripts/native.py pure

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(BIN)/python scripts/demo.py

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-scale: install
	$(BIN)/python -m bench --scale $(BENCH_ARGS)

bench-reload: install
	$(BIN)/python -m bench.reload $(BENCH_ARGS)

soak: install
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
	find mailload smartsink trafficgen -name '*.so' -delete
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
