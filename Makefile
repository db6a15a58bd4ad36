# The two commands of the README:
#   make book   virtual environment, install, data, then the HTML book in _build/html
#   make test   virtual environment, install, data, then unit tests and the notebooks (smoke mode)
# and, after make book, make check-book: every page of the book in a headless browser.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# html_static_path of _config.yml: the offline copy of MathJax goes to $(STATIC)/mathjax.
STATIC := _build/static

.PHONY: book test unit notebooks data install lint clean execute headline mathjax chromium check-book

install: $(STAMP)

$(STAMP): pyproject.toml constraints/ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints/ci.txt -e ".[test,book]"
	touch $(STAMP)

data: $(STAMP)
	bash scripts/ensure-data.sh $(BIN)/python

mathjax:
	bash scripts/fetch-mathjax.sh $(STATIC)

book: $(STAMP) data mathjax
	$(BIN)/jupyter-book build . -W -n --keep-going

chromium:
	bash scripts/ensure-chromium.sh

# Opens every page of the built book in headless Chromium (run make book first).
check-book: $(STAMP) chromium
	$(BIN)/python scripts/check_book.py _build/html

unit: $(STAMP) data
	$(BIN)/python -m pytest tests

notebooks: $(STAMP) data
	$(BIN)/python -m pytest --nbval notebooks/

test: unit notebooks

# Re-run the chapters in full mode and store their outputs (slow); the time of each chapter and
# the machine's load go to results/execution.csv (scripts/execute_notebooks.py --help).
execute: $(STAMP) data
	$(BIN)/python scripts/execute_notebooks.py

# The headline benchmark in full mode, then its timings measured twice
# more (--retime), so that results/headline.json shows how far a timing moves between runs.
headline: $(STAMP) data
	$(BIN)/python -m pruning_utils.benchmark --out results
	$(BIN)/python -m pruning_utils.benchmark --out results --retime
	$(BIN)/python -m pruning_utils.benchmark --out results --retime

lint: $(STAMP)
	$(BIN)/ruff check pruning_utils tests scripts book/_ext

clean:
	rm -rf _build
