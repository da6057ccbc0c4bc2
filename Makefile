# videofetchd developer and packaging entry points. CI calls the same targets (.ci/run).
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PREFIX  ?= /usr/local
DESTDIR ?=
RUNDIR  ?= .run

.PHONY: all venv run demo test test-unit test-integration lint typecheck check e2e bench install uninstall clean

all: venv

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[postgres,test]'
	touch $@

venv: $(VENV)/.installed

## run: the daemon in the foreground on a development config (SQLite, socket and videos under $(RUNDIR)/)
run: venv
	$(PY) -m videofetchd.devconfig $(RUNDIR) > /dev/null
	$(VENV)/bin/videofetchd --config $(RUNDIR)/videofetchd.yaml

## demo: start the test media server, queue some IDs, run the daemon and show videofetchctl status
demo: venv
	$(PY) bench/demo.py

test: venv lint typecheck
	$(PY) -m pytest tests/unit tests/integration

test-unit: venv
	$(PY) -m pytest tests/unit

test-integration: venv
	$(PY) -m pytest tests/integration

lint: venv
	$(VENV)/bin/flake8 videofetchd tests bench

typecheck: venv
	$(VENV)/bin/mypy videofetchd

check: lint typecheck test

## e2e: the end-to-end suite under a real systemd in systemd-nspawn (needs root)
e2e: venv
	$(PY) -m pytest tests/e2e

bench: venv
	$(PY) bench/run.py

install:
	@echo "install: see the systemd issue" && false

clean:
	rm -rf $(VENV) $(RUNDIR) build dist *.egg-info .pytest_cache .mypy_cache
