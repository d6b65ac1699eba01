# `make demo` and `make test` each set themselves up on a fresh machine:
# a virtualenv in .venv with the pinned requirements (installed once, again
# only when requirements.txt changes).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(BIN)/python generate_dataset.py

test: install
	$(BIN)/python -m pytest tests

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow"

bench: install
	$(BIN)/python bench/generate.py

clean:
	rm -rf data/demo demo_images log/demo* model_save/demo* predictions*.csv
