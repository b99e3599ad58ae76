# p2psip: `make demo` and `make test` are the whole quick start.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TRIAL_JOBS ?= 2
# Seconds per fuzz harness; eight harnesses, so the default stays near eight and a half minutes.
FUZZ_SECONDS ?= 60
FUZZ_STAMP := $(VENV)/.fuzz-stamp
# Debian packages the interop tests and benchmarks drive (see README).
DEB_PACKAGES := sip-tester sipsak kamailio coturn tshark nftables iproute2 iptables conntrack systemd prometheus baresip rtpengine-daemon chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv test demo deps bench lint format typecheck check fuzz plugin-cache clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,interop]' --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -b -m twisted.trial --jobs=$(TRIAL_JOBS) tests

demo: $(STAMP)
	$(PY) -m p2psip.demo

deps:
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEB_PACKAGES)

# Figures, never assertions: each script prints a table (see docs and the scripts' docstrings).
bench: $(STAMP)
	$(PY) bench/overlay.py
	$(PY) bench/ring_simulation.py
	$(PY) bench/stun_load.py
	$(PY) bench/nat_matrix.py
	$(PY) bench/sip_stack.py
	$(PY) bench/sip_load.py --auth both --rates 1000,2000,2500,3000 --call-rates 300,500,750,1000 --kamailio
	$(PY) bench/sip_ring_load.py
	$(PY) bench/state_db.py
	$(PY) bench/media_relay.py
	$(PY) bench/super_node_scaling.py
	$(PY) bench/overlay_scaling.py
	$(PY) bench/profile_register.py
	$(PY) bench/signature_algorithms.py
	$(PY) bench/churn.py
	$(PY) bench/sip_overload.py
	$(PY) bench/soak.py

lint: $(STAMP)
	$(VENV)/bin/ruff check p2psip tests bench twisted fuzz
	$(VENV)/bin/ruff format --check p2psip tests bench twisted fuzz

# Rewrites the tree in the project's one format (make lint checks it).
format: $(STAMP)
	$(VENV)/bin/ruff format p2psip tests bench twisted fuzz

typecheck: $(STAMP)
	$(VENV)/bin/mypy p2psip

check: lint typecheck test

$(FUZZ_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,interop,fuzz]' --config-settings editable_mode=compat
	touch $@

# atheris harnesses for every codec (fuzz/README.md): FUZZ_SECONDS each; fails on a crash.
fuzz: $(FUZZ_STAMP)
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS)

# Wheels have no post-install hook: refresh Twisted's plugin cache after installing.
plugin-cache: $(STAMP)
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

clean:
	rm -rf $(VENV) _trial_temp* fuzz/corpus fuzz/artifacts build dist *.egg-info twisted/plugins/dropin.cache
