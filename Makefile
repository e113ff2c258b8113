# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-all proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, exactly this version: the CPU wheel; anything looser pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# Independent k/l/t checker for the tests; installed without its exact pins of
	# pandas and numpy, which would downgrade ours (it needs nothing else).
	$(PY) -m pip install -q --no-deps pycanon==1.3.6
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m privtrain.platform.demo

test: $(STAMP)
	$(PY) -m pytest

# The long drills (marked slow): CI runs them after `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-all: $(STAMP)
	$(PY) -m pytest -m ''

proto: $(STAMP)
	$(PY) -m privtrain.proto.generate

clean:
	rm -rf $(VENV) .privtrain-demo
