# cocalc-ctl: `make demo` and `make test` set everything up (Debian packages, venv) and run.
PY := .venv/bin/python
PREFIX ?= /usr/local

.PHONY: setup test test-unit demo bench-startup install regenerate check-generated clean

setup:
	scripts/setup.sh

test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit tests/golden

demo: setup
	scripts/demo.sh

bench-startup: setup
	$(PY) benchmarks/cli_startup.py

clean:
	rm -rf .venv build *.egg-info .pytest_cache

# Installs into its own venv under $(PREFIX)/lib/cocalc-ctl, with completions, man page and examples.
install:
	python3 -m venv $(DESTDIR)$(PREFIX)/lib/cocalc-ctl
	$(DESTDIR)$(PREFIX)/lib/cocalc-ctl/bin/pip install -q .
	install -d $(DESTDIR)$(PREFIX)/bin
	ln -sf $(PREFIX)/lib/cocalc-ctl/bin/cocalc-ctl $(DESTDIR)$(PREFIX)/bin/cocalc-ctl
	install -Dm644 completions/cocalc-ctl.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/cocalc-ctl
	install -Dm644 completions/_cocalc-ctl $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_cocalc-ctl
	install -Dm644 completions/cocalc-ctl.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/cocalc-ctl.fish
	install -Dm644 man/cocalc-ctl.1 $(DESTDIR)$(PREFIX)/share/man/man1/cocalc-ctl.1
	install -d $(DESTDIR)$(PREFIX)/share/doc/cocalc-ctl/examples/systemd $(DESTDIR)$(PREFIX)/share/doc/cocalc-ctl/examples/sshd $(DESTDIR)$(PREFIX)/share/doc/cocalc-ctl/examples/sshpiperd
	install -m644 examples/config.yaml examples/crontab $(DESTDIR)$(PREFIX)/share/doc/cocalc-ctl/examples/
	install -m644 examples/systemd/* $(DESTDIR)$(PREFIX)/share/doc/cocalc-ctl/examples/systemd/
	install -m644 examples/sshd/* $(DESTDIR)$(PREFIX)/share/doc/cocalc-ctl/examples/sshd/
	install -m644 examples/sshpiperd/* $(DESTDIR)$(PREFIX)/share/doc/cocalc-ctl/examples/sshpiperd/
	install -Dm644 examples/config.yaml $(DESTDIR)/etc/cocalc-ctl/config.yaml.example

regenerate:
	scripts/regenerate

check-generated:
	scripts/regenerate --check
