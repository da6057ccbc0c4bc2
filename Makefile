# videofetchd developer and packaging entry points. CI calls the same targets (.ci/run).
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PREFIX  ?= /usr/local
DESTDIR ?=
RUNDIR  ?= .run

.PHONY: all venv run demo test test-unit test-integration lint typecheck check e2e bench smoke install uninstall clean \
	upgrade-ytdlp

all: venv

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[sites,postgres,test]'
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

## smoke: install the package into a fresh venv and check that the entry points start
smoke:
	rm -rf $(RUNDIR)/smoke
	$(PYTHON) -m venv $(RUNDIR)/smoke
	$(RUNDIR)/smoke/bin/python -m pip install -q '.[sites,postgres]'
	$(RUNDIR)/smoke/bin/videofetchd --version
	$(RUNDIR)/smoke/bin/videofetchctl --version
	$(RUNDIR)/smoke/bin/python -m videofetchd --version
	$(RUNDIR)/smoke/bin/videofetchd --check-config --config etc/videofetchd.yaml

## install: the daemon in a self-contained venv $(PREFIX)/lib/videofetchd (symlinked from
## $(PREFIX)/bin), the systemd unit, sysusers.d/tmpfiles.d snippets and, only when absent,
## /etc/videofetchd/videofetchd.yaml. The Prometheus alert rules and the Grafana dashboard go to
## $(PREFIX)/share/doc/videofetchd/{prometheus,grafana}/ only: installing them is the admin's call. PREFIX=/usr puts unit and snippets under /usr/lib, any
## other PREFIX under /etc. DESTDIR=/stage builds the venv in the staging tree and relocates it
## to $(PREFIX) (scripts, pyvenv.cfg and byte-code name $(PREFIX), never DESTDIR), like
## dh-virtualenv; the package's post-install step then runs systemd-sysusers/systemd-tmpfiles.
## The venv's interpreter is $(PYTHON) resolved to its real path, so build with the target's
## system Python (PYTHON=/usr/bin/python3), not one under /root or /home (ProtectHome= hides it).
## pip honours PIP_* variables, e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels for offline installs.
install:
	@set -eu; \
	prefix='$(PREFIX)'; dest='$(DESTDIR)'; lib="$$prefix/lib/videofetchd"; \
	docdir="$$prefix/share/doc/videofetchd"; \
	if [ "$$prefix" = /usr ]; then unitdir=/usr/lib/systemd/system; \
	  sysusersdir=/usr/lib/sysusers.d; tmpfilesdir=/usr/lib/tmpfiles.d; \
	else unitdir=/etc/systemd/system; sysusersdir=/etc/sysusers.d; tmpfilesdir=/etc/tmpfiles.d; fi; \
	py=$$(command -v '$(PYTHON)') || { echo "install: $(PYTHON) not found" >&2; exit 1; }; \
	py=$$(readlink -f "$$py"); \
	case "$$py" in /root/*|/home/*|/run/user/*) \
	  echo "install: $$py is under a home directory, which ProtectHome= hides from the service;" \
	       "use a system Python, e.g. make install PYTHON=/usr/bin/python3" >&2; exit 1;; esac; \
	echo "install: venv $$dest$$lib (python $$py)"; \
	"$$py" -m venv --clear "$$dest$$lib"; \
	if [ -n "$$dest" ]; then compile=--no-compile; else compile=; fi; \
	"$$dest$$lib/bin/python" -m pip install -q --disable-pip-version-check $$compile '.[sites,postgres]'; \
	if [ -n "$$dest" ]; then \
	  grep -rlIF -- "$$dest$$lib" "$$dest$$lib" | while IFS= read -r f; do \
	    sed -i "s|$$dest$$lib|$$lib|g" "$$f"; done; \
	  "$$dest$$lib/bin/python" -m compileall -q -j0 -s "$$dest" -p / "$$dest$$lib/lib" >/dev/null; \
	fi; \
	install -d "$$dest$$prefix/bin" "$$dest$$unitdir" "$$dest$$sysusersdir" "$$dest$$tmpfilesdir" \
	  "$$dest$$docdir" "$$dest/etc/videofetchd"; \
	for b in videofetchd videofetchctl; do ln -sfn "../lib/videofetchd/bin/$$b" "$$dest$$prefix/bin/$$b"; done; \
	sed -e "s|@BINDIR@|$$prefix/bin|g" -e "s|@DOCDIR@|$$docdir|g" systemd/videofetchd.service \
	  > "$$dest$$unitdir/videofetchd.service"; \
	chmod 0644 "$$dest$$unitdir/videofetchd.service"; \
	sed -e "s|@LIBDIR@|$$lib|g" -e "s|@DOCDIR@|$$docdir|g" systemd/videofetchd-upgrade.service > "$$dest$$unitdir/videofetchd-upgrade.service"; \
	install -m 0644 systemd/videofetchd-upgrade.timer "$$dest$$unitdir/videofetchd-upgrade.timer"; \
	chmod 0644 "$$dest$$unitdir/videofetchd-upgrade.service"; \
	install -m 0644 systemd/videofetchd.sysusers "$$dest$$sysusersdir/videofetchd.conf"; \
	install -m 0644 systemd/videofetchd.tmpfiles "$$dest$$tmpfilesdir/videofetchd.conf"; \
	install -m 0644 systemd/notify-reload.conf "$$dest$$docdir/notify-reload.conf"; \
	if [ -f README.md ]; then install -m 0644 README.md "$$dest$$docdir/README.md"; fi; \
	install -D -m 0644 etc/prometheus/videofetchd.rules.yml "$$dest$$docdir/prometheus/videofetchd.rules.yml"; \
	install -D -m 0644 etc/grafana/videofetchd.json "$$dest$$docdir/grafana/videofetchd.json"; \
	if [ -e "$$dest/etc/videofetchd/videofetchd.yaml" ]; then \
	  echo "install: keeping the existing $$dest/etc/videofetchd/videofetchd.yaml"; \
	else install -m 0640 etc/videofetchd.yaml "$$dest/etc/videofetchd/videofetchd.yaml"; fi; \
	if [ -z "$$dest" ]; then \
	  if command -v systemd-sysusers >/dev/null; then systemd-sysusers "$$sysusersdir/videofetchd.conf"; fi; \
	  if command -v systemd-tmpfiles >/dev/null; then \
	    systemd-tmpfiles --create "$$tmpfilesdir/videofetchd.conf"; fi; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	  echo "install: done; enable with: systemctl enable --now videofetchd"; \
	  echo "install: weekly yt-dlp upgrades (optional): systemctl enable --now videofetchd-upgrade.timer"; \
	fi

## upgrade-ytdlp: the newest yt-dlp[default] (with the yt-dlp-ejs it pins) and deno, together, into the
## installed venv ($(PREFIX)/lib/videofetchd; VENV=path for another, e.g. VENV=.venv). The running
## daemon notices within seconds and moves new jobs to them (running ones finish on the old yt-dlp).
## systemd/videofetchd-upgrade.timer runs the same weekly once enabled. pip honours PIP_* variables.
upgrade-ytdlp:
	@set -eu; \
	venv='$(if $(filter command line,$(origin VENV)),$(VENV),$(PREFIX)/lib/videofetchd)'; \
	[ -x "$$venv/bin/python" ] || { echo "upgrade-ytdlp: no venv at $$venv (make install first, or VENV=path)" >&2; exit 1; }; \
	before=$$("$$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | awk '$$1 ~ /^(yt-dlp|yt-dlp-ejs|deno)$$/ {printf "%s %s  ", $$1, $$2}'); \
	"$$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy only-if-needed \
	  'yt-dlp[default]' deno; \
	after=$$("$$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | awk '$$1 ~ /^(yt-dlp|yt-dlp-ejs|deno)$$/ {printf "%s %s  ", $$1, $$2}'); \
	echo "upgrade-ytdlp: $$venv: before: $$before"; echo "upgrade-ytdlp: $$venv: now:    $$after"

## uninstall: removes what install put in place; keeps /etc/videofetchd, /var/lib/videofetchd and
## the videofetchd user (like a package removal without purge).
uninstall:
	@set -eu; \
	prefix='$(PREFIX)'; dest='$(DESTDIR)'; lib="$$prefix/lib/videofetchd"; \
	if [ "$$prefix" = /usr ]; then unitdir=/usr/lib/systemd/system; \
	  sysusersdir=/usr/lib/sysusers.d; tmpfilesdir=/usr/lib/tmpfiles.d; \
	else unitdir=/etc/systemd/system; sysusersdir=/etc/sysusers.d; tmpfilesdir=/etc/tmpfiles.d; fi; \
	if [ -z "$$dest" ] && [ -d /run/systemd/system ]; then \
	  systemctl disable --now videofetchd.service 2>/dev/null || true; fi; \
	for b in videofetchd videofetchctl; do \
	  if [ -L "$$dest$$prefix/bin/$$b" ]; then rm -f "$$dest$$prefix/bin/$$b"; fi; done; \
	rm -rf "$$dest$$lib" "$$dest$$prefix/share/doc/videofetchd"; \
	if [ -z "$$dest" ] && [ -d /run/systemd/system ]; then \
	  systemctl disable --now videofetchd-upgrade.timer 2>/dev/null || true; fi; \
	rm -f "$$dest$$unitdir/videofetchd-upgrade.service" "$$dest$$unitdir/videofetchd-upgrade.timer"; \
	rm -f "$$dest$$unitdir/videofetchd.service" "$$dest$$sysusersdir/videofetchd.conf" \
	  "$$dest$$tmpfilesdir/videofetchd.conf"; \
	if [ -z "$$dest" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	echo "uninstall: kept /etc/videofetchd, /var/lib/videofetchd and the videofetchd user"

clean:
	rm -rf $(VENV) $(RUNDIR) build dist *.egg-info .pytest_cache .mypy_cache
