# warnd — two commands do all set-up on a fresh Debian machine:
#   make run    the daemon on its embedded defaults (config/warnd.toml, SQLite under ./var, HTTP 127.0.0.1:8080)
#   make test   the test suite
# Both create .venv, install the project into it, and install the Debian packages warnd needs
# (when run as root; otherwise they print the exact apt-get command).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# mosquitto: the broker loudspeakers and LED boards use (and tests start their own);
# espeak-ng + ffmpeg: spoken warnings as MP3; systemd: systemd-analyze checks the unit;
# libfaketime: tests/faults/test_clock.py steps a running warnd's wall clock;
# chromium + fonts-wqy-microhei: the console's end-to-end tests (Playwright drives Debian's
# chromium, no browser download) and their screenshots in Chinese;
# postgresql: the PostgreSQL backend's tests start their own cluster (initdb, pg_ctl on a free port).
DEB_PACKAGES := mosquitto espeak-ng ffmpeg systemd libfaketime chromium fonts-wqy-microhei postgresql

.PHONY: run test test-pg bench lint deps venv clean install

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	$(PYTHON) -c "import ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "warnd needs Debian packages that are missing. Run:"; \
	    echo "  sudo apt-get update && sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

run: deps venv
	PY=$(PY) scripts/dev-run.sh

# The pipeline's tests again with warnd's store on PostgreSQL (`--store=postgres`: each in-process
# warnd on a fresh database of a server the tests start themselves); `make test-pg` runs every
# test that way (about 3 minutes more).
PG_TESTS := tests/test_pipeline.py tests/test_update_cancel.py tests/test_approval.py \
	tests/test_retention.py tests/test_escalation.py tests/test_idempotency.py tests/test_confirm.py \
	tests/test_metrics.py tests/test_report.py tests/test_reconcile.py tests/test_mqtt_contract.py \
	tests/test_disk_full.py tests/test_security.py tests/test_schedule.py tests/test_quiet_hours.py

# pytest exits 5 when it collected no tests: make treats that as the failure it is.
test: deps venv
	$(VENV)/bin/ruff check warnd adapters tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider
	$(PY) -m pytest -q -p no:cacheprovider --store=postgres $(PG_TESTS)

test-pg: deps venv
	$(PY) -m pytest -q -p no:cacheprovider --store=postgres

bench: deps venv
	$(PY) bench/run_all.py

lint: venv
	$(VENV)/bin/ruff check warnd adapters tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache

include mk/install.mk
