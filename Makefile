# `make demo` and `make test` set everything up on a fresh machine: they create .venv when it is
# missing and install fsdtrain (editable, with the dev extra) into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fsdtrain-installed
WORKDIR ?= demo-run
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint benchmarks clean browser

# constraints.txt: the exact versions the tests passed with, so every machine gets the same install
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fsdtrain demo --workdir $(WORKDIR)

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) browser
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# the headless browser tests/review opens `fsdtrain report` pages in (Debian's chromium): installed when missing
browser:
	@command -v chromium >/dev/null 2>&1 || { S=$$(test "$$(id -u)" = 0 || echo sudo); $$S apt-get install -y chromium || { $$S apt-get update && $$S apt-get install -y chromium; }; }

lint: $(STAMP)
	$(BIN)/ruff check fsdtrain tests benchmarks

benchmarks: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
