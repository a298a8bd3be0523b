# Two commands matter: `make demo` and `make test`. Everything they need is installed from here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch releases that install from the local cache on the build machines (see DESIGN.md 6).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[local,dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) scripts/demo.py

# Real services for the tests: Azurite (npm) and dockerd with an offline-built base image (apt).
test: venv
	bash scripts/setup_azurite.sh
	sh scripts/setup_docker.sh
	bash scripts/setup_browser.sh
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs data .pytest_cache
