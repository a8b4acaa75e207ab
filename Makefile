# Two commands do all setup on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv from nothing, pinned by constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-deps mlserver models demo bench up test test-unit lint lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the integration tests drive: headless Chromium renders the status
# page, Prometheus scrapes the stack and checks the dashboard's queries and alert rules.
# Installs only what is missing (needs root or sudo); tests skip, saying why, without them.
SYSTEM_PACKAGES := chromium prometheus
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing \
	  || echo "system-deps: could not install$$missing; the tests that need them skip, saying so"; \
	fi

# MLServer, a third-party OIP server the integration tests route to, in a venv of its own:
# its pins (fastapi) conflict with Ray Serve's. scikit-learn, numpy, scipy and joblib are
# pinned to the main venv's versions, so a model pickled there loads here. The package
# index or PIP_FIND_LINKS serve it; without either the MLServer test skips, saying so.
MLSERVER_VENV  := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed
MLSERVER_PINS  := mlserver==1.7.1 mlserver-sklearn==1.7.1

$(MLSERVER_STAMP): constraints.txt
	@{ test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV); } && \
	grep -E '^(scikit-learn|numpy|scipy|joblib)==' constraints.txt > $(MLSERVER_VENV)/pins.txt && \
	$(MLSERVER_VENV)/bin/python -m pip install --quiet -c $(MLSERVER_VENV)/pins.txt \
	  $(MLSERVER_PINS) && touch $(MLSERVER_STAMP) || \
	echo "mlserver: could not install $(MLSERVER_PINS); tests/integration/test_mlserver.py skips"

mlserver: $(MLSERVER_STAMP)

models: install
	$(BIN)/edgeroute models build

demo: install
	$(BIN)/edgeroute demo

# About 11 minutes: every routing policy on the same trace, with faults; see docs/benchmark.md.
bench: install
	$(BIN)/edgeroute bench infra/scenarios/default.yaml

up: install
	$(BIN)/edgeroute up

# pytest exits 5 when it collected no test: make treats that as a failure too.
test: install system-deps mlserver
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy edgeroute router edge cloud

# Re-pin every dependency after changing pyproject.toml.
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^edgeroute' > constraints.txt

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) out .edgeroute .pytest_cache .ruff_cache .mypy_cache .hypothesis
