# Two commands do everything on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CHECKOV_VENV := .venv-checkov
export PYTHONPATH := $(CURDIR)

.PHONY: install run test lint unit dags integration e2e infra security bench soak backfill clean

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

run: $(VENV)/.installed
	AIRFLOW_EXECUTOR=$(EXECUTOR) $(PY) -m local.run

test: install lint
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check --target-version py39 --no-cache include/glue/

backfill: $(VENV)/.installed
	$(PY) -m local.backfill --from "$(FROM)" --to "$(TO)" $(if $(NOTIFY),--notify,)

clean:
	rm -rf .local .pytest_cache .ruff_cache

# Benchmarks (not tests: CI runs `make test`, never this). `$(PY) -m bench --quick` is the short version.
bench: $(VENV)/.installed
	$(PY) -m bench

# Soak under faults: 288 windows of real data through the real DAG, 20% of AWS calls failing (docs/reliability.md).
soak: $(VENV)/.installed
	$(PY) -m local.soak
