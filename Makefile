# Conveniences for developers; the README's two commands need nothing but python3.
.PHONY: run test lint check bench bench-cpu screenshots

VENV := .venv
PY := $(VENV)/bin/python

$(VENV):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev,fleet]'

run: $(VENV)
	$(VENV)/bin/gunicorn -c gunicorn.conf.py

test: $(VENV)
	$(PY) -m pytest

lint: $(VENV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

check: lint test
	bash deploy/check.sh

bench: $(VENV)
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) -m bench.ingest

# The README's screenshots of the dashboard, taken by its browser tests (needs chromium).
screenshots: $(VENV)
	JOBPOOL_SCREENSHOTS=docs $(PY) -m pytest -q tests/test_ui_browser.py
