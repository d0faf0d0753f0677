# `make install` — warnd on a Debian server under systemd (included from the Makefile).
#
# Run as root from a checkout. Safe to re-run: an upgrade is the same command. It
#   - installs the Debian packages warnd needs (the Makefile's `deps`),
#   - creates /opt/warnd/venv (once) and installs this checkout into it (every time),
#   - links warnd and warnctl into /usr/local/bin,
#   - installs the unit, the sysusers and tmpfiles fragments, and creates the warnd user,
#   - copies config/warnd.toml to /etc/warnd/warnd.toml ONLY IF there is none yet (server
#     paths filled in, the demo token commented out) and the example directory beside it,
#   - reloads systemd. It does not enable or start warnd: see docs/deploy.md for what to
#     edit first, then `systemctl enable --now warnd`.
# DESTDIR stages everything under another root (packaging); nothing is run there.

WARND_PREFIX ?= /opt/warnd
WARND_VENV := $(WARND_PREFIX)/venv
SYSTEMD_UNIT_DIR ?= /usr/lib/systemd/system
SYSUSERS_DIR ?= /usr/lib/sysusers.d
TMPFILES_DIR ?= /usr/lib/tmpfiles.d
WARND_ETC := $(DESTDIR)/etc/warnd

.PHONY: install install-check-root install-venv install-systemd install-config

install: install-check-root deps install-venv install-systemd install-config
	@echo
	@echo "warnd is installed in $(WARND_VENV). Next (docs/deploy.md):"
	@echo "  1. edit /etc/warnd/warnd.toml and /etc/warnd/directory.toml"
	@echo "  2. warnd hash-token   -> put the hash in warnd.toml or /etc/warnd/credentials/api_token_hashes"
	@echo "  3. warnd check-config --config /etc/warnd/warnd.toml"
	@echo "  4. systemctl enable --now warnd   (after an upgrade: systemctl restart warnd)"

install-check-root:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then \
	  echo "make install writes to /opt, /etc and /usr/lib: run it as root (sudo make install)"; exit 1; \
	fi

# The venv is made once; `pip install` of the checkout upgrades warnd in place on every run.
# .pyc files are compiled now: the service runs with a read-only /opt.
# Under DESTDIR the venv is built at its staged path, which Python writes into the console
# scripts' shebangs, the activate scripts, pyvenv.cfg and every .pyc; a package would then run
# /tmp/stage/opt/warnd/venv/bin/python. So (as dh-virtualenv does) the text files are rewritten
# to name $(WARND_VENV), and the .pyc files are compiled with that path (-s strips DESTDIR,
# -p / puts the root back); -f because ensurepip's pip was already compiled at the stage.
# pip runs as `python -m pip`: after the rewrite the staged bin/pip's shebang names the final
# place, and a re-run must still work.
STAGED_VENV := $(abspath $(DESTDIR)$(WARND_VENV))
VENV_PY := "$(STAGED_VENV)/bin/python"

install-venv:
	@if [ ! -x $(VENV_PY) ]; then \
	  echo "creating $(STAGED_VENV)"; \
	  $(PYTHON) -m venv "$(STAGED_VENV)"; \
	  $(VENV_PY) -m pip install --quiet --upgrade pip; \
	fi
	$(VENV_PY) -m pip install --quiet --upgrade --no-compile .
ifeq ($(strip $(DESTDIR)),)
	$(VENV_PY) -m compileall -q "$(WARND_VENV)/lib"
else
	grep -rlIF -e "$(STAGED_VENV)" "$(STAGED_VENV)" | xargs -r sed -i -e "s|$(STAGED_VENV)|$(WARND_VENV)|g"
	$(VENV_PY) -m compileall -q -f -s "$(abspath $(DESTDIR))" -p / "$(STAGED_VENV)/lib"
endif
	install -d "$(DESTDIR)/usr/local/bin"
	ln -sfn "$(WARND_VENV)/bin/warnd" "$(DESTDIR)/usr/local/bin/warnd"
	ln -sfn "$(WARND_VENV)/bin/warnctl" "$(DESTDIR)/usr/local/bin/warnctl"

install-systemd:
	install -D -m 0644 systemd/warnd.service "$(DESTDIR)$(SYSTEMD_UNIT_DIR)/warnd.service"
	install -D -m 0644 systemd/warnd.sysusers "$(DESTDIR)$(SYSUSERS_DIR)/warnd.conf"
	install -D -m 0644 systemd/warnd.tmpfiles "$(DESTDIR)$(TMPFILES_DIR)/warnd.conf"
	@if [ -z "$(DESTDIR)" ]; then systemd-sysusers warnd.conf; fi

# Never overwrites the sysadmin's files. The shipped example runs from a checkout (./var,
# config/directory.toml, a demo token); on a server the paths are /var/lib/warnd and
# /etc/warnd, and the demo token must not open the API, so its table is commented out.
install-config: install-systemd
	install -d -m 0750 "$(WARND_ETC)"
	@if [ ! -e "$(WARND_ETC)/warnd.toml" ]; then \
	  echo "writing $(WARND_ETC)/warnd.toml"; \
	  sed -e 's|^state_dir = "./var"|state_dir = "/var/lib/warnd"|' \
	      -e 's|^path = "config/directory.toml"|path = "/etc/warnd/directory.toml"|' \
	      -e '/^\[\[auth\.tokens\]\]/,/^hash = /s/^/# /' \
	      config/warnd.toml > "$(WARND_ETC)/warnd.toml.new" && \
	  chmod 0640 "$(WARND_ETC)/warnd.toml.new" && mv "$(WARND_ETC)/warnd.toml.new" "$(WARND_ETC)/warnd.toml"; \
	else \
	  echo "keeping $(WARND_ETC)/warnd.toml; the shipped example is $(WARND_ETC)/warnd.toml.example"; \
	fi
	install -m 0640 config/warnd.toml "$(WARND_ETC)/warnd.toml.example"
	@if [ ! -e "$(WARND_ETC)/directory.toml" ]; then \
	  echo "writing $(WARND_ETC)/directory.toml (an example county: replace it with yours)"; \
	  install -m 0640 config/directory.toml "$(WARND_ETC)/directory.toml"; \
	fi
	@if [ -z "$(DESTDIR)" ]; then \
	  chgrp warnd /etc/warnd /etc/warnd/warnd.toml /etc/warnd/warnd.toml.example /etc/warnd/directory.toml; \
	  systemd-tmpfiles --create warnd.conf; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi
