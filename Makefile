# The two commands of the README: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# The dashboard's browser tests drive Debian's chromium (never a browser Playwright downloads).
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup serve test lint bench

setup: $(VENV)/.installed $(CHROMIUM)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else \
		echo "note: $(CHROMIUM) is missing and only root can install it (apt-get install" \
			"chromium); the dashboard's browser tests are skipped without it"; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $@

serve: setup
	$(BIN)/tfmux serve $(ARGS)

lint: setup
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks)
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: setup
	benchmarks/run.sh $(ARGS)
