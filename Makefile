# The README's two commands are `make run` and `make test`; both set up what
# they need (a virtualenv in .venv, node_modules for buf and the Node example).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck protos buf node-deps bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch $@

examples/node/node_modules/.installed: examples/node/package.json
	cd examples/node && npm install --no-audit --no-fund --silent
	touch $@

node-deps: node_modules/.installed examples/node/node_modules/.installed

## Runs the service with embedded defaults: offline provider, no API key needed.
run: $(STAMP)
	$(BIN)/aiproc serve

## Runs the whole test suite: lint, types, the protobuf contract, and pytest.
test: $(STAMP) node-deps
	$(MAKE) --no-print-directory lint typecheck buf
	scripts/ensure-redis
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' editable-install import hook, so it checks a
# tree of symlinks laid out as the installed package is.
typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck/aiproc
	ln -s ../../../gen/python/aiproc/__init__.py build/typecheck/aiproc/__init__.py
	ln -s ../../../gen/python/aiproc/v1 build/typecheck/aiproc/v1
	ln -s ../../../server build/typecheck/aiproc/server
	ln -s ../../../client build/typecheck/aiproc/client
	cd build/typecheck && ../../$(BIN)/mypy -p aiproc.server -p aiproc.client

buf: node_modules/.installed
	npx --no-install buf lint
	@if git rev-parse --verify --quiet main >/dev/null; then \
		npx --no-install buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch yet, skipped"; fi

protos: $(STAMP)
	$(BIN)/python gen/generate.py

clean:
	rm -rf $(VENV) node_modules examples/node/node_modules build .mypy_cache .ruff_cache .pytest_cache

## The benchmark suite (bench/suite.py; BENCH_ARGS=--quick for the short run): every
## comparison measured in the same run; one table, and bench/results/suite.json.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	scripts/ensure-redis
	$(BIN)/python bench/suite.py $(BENCH_ARGS)
