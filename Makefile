# Two commands from a fresh clone: `make demo` (inpainted pictures and metrics) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: venv demo-venv test demo app lint

venv: $(VENV)/.installed

# the pinned environment, then the project itself, editable (pyproject.toml): scripts, tests and
# benches import its packages from any folder; rerun when either file changes
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

# gradio and selenium, for the page and its browser test
demo-venv: $(VENV)/.installed-demo

$(VENV)/.installed-demo: $(VENV)/.installed requirements-demo.txt
	$(PY) -m pip install -r requirements-demo.txt
	touch $@

test: demo-venv
	$(PY) -m pytest

demo: venv
	$(PY) -m data.prepare
	$(PY) inpainting.py --output-dir outputs/demo

app: demo-venv
	$(PY) app.py

lint: venv
	$(VENV)/bin/ruff check .
