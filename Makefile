# Two commands do everything on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CHECKOV_VENV := .venv-checkov
export PYTHONPATH := $(CURDIR)

.PHONY: install run test test-fast lint bench soak backfill migrate-ledger migrate-storage glue-bundle clean

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt constraints-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt -c constraints-checkov.txt
	touch $@

install: $(VENV)/.installed $(CHECKOV_VENV)/.installed

# EXECUTOR=CeleryExecutor: two Celery workers and a local Redis broker instead of the LocalExecutor.
EXECUTOR ?= LocalExecutor

# FEED=exchange: prices from an exchange through ccxt (the exchange stand-in, or PRICE_EXCHANGE_URL's API).
FEED ?= synthetic

run: $(VENV)/.installed
	AIRFLOW_EXECUTOR=$(EXECUTOR) FEED=$(FEED) $(PY) -m local.run

# Test files run side by side in TEST_WORKERS processes (pytest-xdist), each file whole in one of them:
# its module fixtures (a local stack among them) start once, on free ports, in folders of their own.
# Most of a stack test's time is waiting on Airflow, so three workers fit two cores; the files that
# start a stack go first (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# On a new machine pip's installs and apt's chromium each spend most of their time waiting on downloads:
# they run side by side (lint once the venv is there), then the tests.
test:
	$(MAKE) -j3 install lint browser
	$(PYTEST)

# The inner loop: lint, unit and DAG tests, no stand-in or Airflow stack (about a minute on 2 cores).
test-fast: $(VENV)/.installed lint
	$(PYTEST) tests/unit tests/dags

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

backfill: $(VENV)/.installed
	$(PY) -m local.backfill --from="$(FROM)" --to="$(TO)" $(if $(NOTIFY),--notify,) $(if $(FETCH),--fetch,)

# Once after upgrading to one ledger object per window (README: Upgrading); for a stand-in, AWS_ENDPOINT_URL and its
# keys (README: Security).
migrate-ledger: $(VENV)/.installed
	$(PY) -m include.price_pipeline.migrate

# Once after upgrading to one storage shape for every pair (README: Upgrading): the default pair's <slot>.csv and
# Parquet months move into <slot>/pairs.csv and pair=<SLUG>/; a second run moves nothing.
migrate-storage: $(VENV)/.installed
	$(PY) -m include.price_pipeline.migrate_storage

# The Glue job's bundle (its --extra-py-files) for Terraform to upload: build/price_glue.zip, the same bytes on
# every machine (include/price_pipeline/glue_bundle.py). Before `terraform plan` (docs/deploy.md).
glue-bundle: $(VENV)/.installed
	$(PY) -m include.price_pipeline.glue_bundle

clean:
	rm -rf .local .pytest_cache .ruff_cache build

# Benchmarks (not tests: CI runs `make test`, never this). `$(PY) -m bench --quick` is the short version.
bench: $(VENV)/.installed browser
	$(PY) -m bench

# Soak under faults: 288 windows of real data through the real DAG, 20% of AWS calls failing (docs/reliability.md).
soak: $(VENV)/.installed
	$(PY) -m local.soak

# Debian's chromium for the browser test, the bench row and the screenshot of the Price alerts page
# (Playwright from PyPI drives it; its own browser download is never used). Installed only when missing.
.PHONY: browser screenshot
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Several at once on a new machine (two checkouts' make test): dpkg's lock is waited for, and an apt-get
# update that met another's lists lock tries again 10 s later, by when chromium may be there.
APT := $(SUDO) apt-get -o DPkg::Lock::Timeout=600
browser:
	@for try in 1 2 3 4 5 6 7 8 9 10 11 12; do \
	  command -v chromium >/dev/null && exit 0; \
	  $(APT) update && $(APT) install -y chromium && exit 0; \
	  sleep 10; \
	done; echo "make browser: apt could not install chromium (see above)"; exit 1

# docs/price-alerts.png and docs/mapped-publish.png (shown in the README): the page's browser test and the
# mapped publish's, each on its own local stack, screenshotted.
screenshot: $(VENV)/.installed browser
	PRICE_ALERTS_SCREENSHOT=docs/price-alerts.png $(PY) -m pytest tests/e2e/test_price_alerts_page.py -k shows_the_alerts
	PRICE_GRID_SCREENSHOT=docs/mapped-publish.png $(PY) -m pytest tests/e2e/test_mapped_publish_grid.py
