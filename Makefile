# Two commands matter: `make demo` runs the product, `make test` runs the tests.
# Both create .venv on first use and reuse it afterwards.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.b2cal-installed
PYTEST_ARGS ?=
# Debian packages that the tests need: slapd and ldap-utils run the test directory, and the
# libldap/libsasl headers build python-ldap, which the FAB auth manager needs for LDAP logins.
# openssh-server provides the sshd that the SSH site tests start on 127.0.0.1 with their own
# config (the package's own service is not used). docker-compose (Compose v1) checks
# docker-compose.yaml statically; no Docker engine is needed for that. chromium and chromium-driver
# run the browser tests of the calibration pages: Playwright drives Debian's Chromium and never
# downloads a browser of its own.
SYSTEM_PACKAGES := slapd ldap-utils libldap-dev libsasl2-dev openssh-server docker-compose chromium chromium-driver

.PHONY: install system-packages demo e2e test test-fast lint docs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The tests also need python-ldap, which compiles against the headers that system-packages installs;
# the demo does not, so `make demo` needs no Debian package.
TEST_STAMP := $(VENV)/.b2cal-test-installed
$(TEST_STAMP): $(STAMP) | system-packages
	$(PY) -m pip install --quiet -e '.[dev,ldap]'
	@touch $(TEST_STAMP)

install: $(STAMP)

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing missing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Both run a local Rucio server from its own venv (see rucio-server-venv below).
# Options of `b2cal demo`, e.g. `make demo DEMO_ARGS=--autopilot`.
DEMO_ARGS ?=
demo: install docs rucio-server-venv
	$(VENV)/bin/b2cal demo $(DEMO_ARGS)

e2e: install rucio-server-venv
	$(VENV)/bin/b2cal e2e

# Two pytest-xdist workers: the two whole-stack folders run side by side, each on its own worker,
# and the other folders fill in around them (see tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: system-packages $(TEST_STAMP) rucio-server-venv docs
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope) $(PYTEST_ARGS)

# The Rucio server's own venv: its pinned dependencies clash with Airflow's (see tools/rucio_server).
RUCIO_VENV ?= .venv-rucio
.PHONY: rucio-server-venv
rucio-server-venv:
	PYTHON=$(PYTHON) tools/rucio_server/make_venv.sh $(RUCIO_VENV)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The plugin serves this folder at /b2cal/docs/; sphinx-build only rebuilds what changed.
docs: install
	$(VENV)/bin/sphinx-build -q -b html docs docs/_build/html

clean:
	rm -rf .demo .e2e docs/_build .pytest_cache
