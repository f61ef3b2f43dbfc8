# make demo  - set up .venv and run the demo (ingest -> train -> tag flows on a generated catalog)
# make test  - set up .venv and run the whole test suite (slow tests included)
#
# The install is plain `pip install -e .[dev]`. On a machine of this project's CI kind pip
# is pointed (by /etc/xdg/pip) at torch/torchvision wheels on local disk, so nothing
# multi-GB is downloaded; elsewhere pip takes torch from PyPI as usual. To use a CPU-only
# torch elsewhere: make PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
PIP_EXTRA ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) -e '.[dev]'
	@touch $(STAMP)

demo: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m flows.demo

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf demo .pytest_cache
