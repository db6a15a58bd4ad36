# The two commands of the README:
#   make book   virtual environment, install, data, then the HTML book in _build/html
#   make test   virtual environment, install, data, then unit tests and the notebooks (smoke mode)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book test unit notebooks data install lint clean execute

install: $(STAMP)

$(STAMP): pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints/ci.txt -e ".[test,book]"
	touch $(STAMP)

data: $(STAMP)
	bash scripts/ensure-data.sh $(BIN)/python

book: $(STAMP) data
	$(BIN)/jupyter-book build . -W -n --keep-going

unit: $(STAMP) data
	$(BIN)/python -m pytest tests

notebooks: $(STAMP) data
	$(BIN)/python -m pytest --nbval notebooks/

test: unit notebooks

# Re-run the chapters in full mode and store their outputs (slow).
execute: $(STAMP) data
	$(BIN)/python scripts/execute_notebooks.py

lint: $(STAMP)
	$(BIN)/ruff check pruning_utils tests

clean:
	rm -rf _build
