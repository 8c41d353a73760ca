# Two commands from a fresh clone: `make demo` (inpainted pictures and metrics) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv test demo lint

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

test: venv
	$(PY) -m pytest

demo: venv
	$(PY) -m data.prepare
	$(PY) inpainting.py --output-dir outputs/demo

lint: venv
	$(VENV)/bin/ruff check .
