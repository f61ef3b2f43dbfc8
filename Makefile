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

.PHONY: setup browser demo test test-fast clean deploy

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) -e '.[dev]'
	@touch $(STAMP)

demo: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m flows.demo

test: setup browser
	$(BIN)/python -m pytest

# tests/flows/test_ui.py drives the Prefect UI in Debian's Chromium (playwright over CDP), never
# in a browser that `playwright install` downloads: such downloads fail on this project's
# machines. Installed here when missing and we are root with apt-get; otherwise a message,
# and the other tests still run (test_ui.py then fails saying what is missing).
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian's chromium for tests/flows/test_ui.py"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        --no-install-recommends chromium >/dev/null; } \
	    || echo "make: apt-get install chromium failed (see above); tests/flows/test_ui.py will fail"; \
	  else \
	    echo "make: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get)."; \
	    echo "      Install it: sudo apt-get install chromium  (else tests/flows/test_ui.py fails)"; \
	  fi; }

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# All deployments of prefect.yaml to the server in PREFECT_API_URL (docs/deploying.md).
# The nightly parameters have no sensible default, so they must be given:
#   make deploy TAGGER_LAKE=s3://shop-lake/tagger TAGGER_CATALOG=s3://exports/catalog.csv \
#        TAGGER_TAXONOMY=catalog_schemas/taxonomies/fashion_product_images.yaml \
#        TAGGER_IMAGE=registry.example.com/product-tagger:<tag>
TAGGER_CPU_POOL ?= cpu
TAGGER_GPU_POOL ?= gpu
export TAGGER_CPU_POOL TAGGER_GPU_POOL TAGGER_LAKE TAGGER_CATALOG TAGGER_TAXONOMY TAGGER_IMAGE

deploy: setup
	@for v in PREFECT_API_URL TAGGER_LAKE TAGGER_CATALOG TAGGER_TAXONOMY TAGGER_IMAGE; do \
	  eval test -n "\"\$$$$v\"" || { echo "make deploy: $$v is not set (see docs/deploying.md)"; exit 2; }; done
	$(BIN)/prefect --no-prompt deploy --all

clean:
	rm -rf demo .pytest_cache
