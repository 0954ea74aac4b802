# Two commands on a fresh machine:
#   make run    set up, pull the data, run the pipeline on params.yaml (or PARAMS=params/<family>.yaml,
#               which runs in its own workspace runs/<family>/)
#   make test   set up, run the test suite
PARAMS ?= params.yaml
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# dvc.yaml runs `python -m ...`: it must be this environment's python.
export PATH := $(abspath $(BIN)):$(PATH)
# A DVC cache outside the work tree keeps the trained teacher when the tree is laid anew.
DVC_CACHE ?= $(HOME)/.cache/textcompress/dvc-cache

.PHONY: setup run test data clean-reports

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first (pip finds it locally); a bare `torch` would pull a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

setup: $(VENV)/.installed
	@if [ -z "$$($(BIN)/dvc config --local cache.dir 2>/dev/null)" ]; then \
		mkdir -p "$(DVC_CACHE)" && $(BIN)/dvc cache dir --local "$(DVC_CACHE)"; fi

data: setup
	$(BIN)/dvc pull data.dvc

run: setup
	$(BIN)/textcompress run --params $(PARAMS)

test: setup
	$(BIN)/python -m pytest -q

clean-reports:
	rm -rf reports/*.json reports/*.md reports/*.png
