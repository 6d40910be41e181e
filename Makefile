# The project's commands. Each target installs what it needs first, so a fresh clone works as is.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed

.PHONY: run test check bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP) $(NPM_STAMP)

## run: the whole product on embedded defaults (or on DATABASE_URL when set)
run: install
	$(BIN)/python -m ops up

## test: the whole suite against real Postgres (and Redis where present), in TEST_WORKERS processes
## (pytest-xdist; the suite mostly waits, so more than the cores); PYTEST_ARGS adds or overrides
TEST_WORKERS ?= 4
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

## check: lint and strict typing over all project code, squawk over the migrations
check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/squawk supabase/migrations/*.sql
	$(BIN)/python -m ops.lint

## bench: benchmarks, ratios measured side by side in one run
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
