# cocalc-ctl: `make demo` and `make test` set everything up (Debian packages, venv) and run.
PY := .venv/bin/python
PREFIX ?= /usr/local

.PHONY: setup test test-unit demo bench-startup clean

setup:
	scripts/setup.sh

test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit tests/golden

demo: setup
	scripts/demo.sh

bench-startup: setup
	$(PY) benchmarks/cli_startup.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache
