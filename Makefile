# `make lab` brings up the local nspawn lab and deploys onto it; `make test` runs the whole suite
# (`make check` — ruff, mypy, shellcheck and unit tests, no root needed — then the lab tests).
# All install what they need (Debian packages, a virtualenv from requirements.txt) on first use.
VENV     ?= venv
PY       := $(VENV)/bin/python
STACK    ?= lab
HOSTS    ?= 3
# what `make check` needs (no root once installed), and what the lab needs on top
CHECK_PKGS := shellcheck shfmt curl
LAB_PKGS   := systemd-container debootstrap iproute2 openssh-client etcd-client xz-utils
export PULUMI_CONFIG_PASSPHRASE ?= kube-hardway-lab

.PHONY: test check lab lab-down lab-status lab-destroy preview bench lint deps check-deps

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

define install_missing
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

check-deps: $(VENV)/.installed
	$(call install_missing,$(CHECK_PKGS))

deps: check-deps
	$(call install_missing,$(LAB_PKGS))

# the lab modules on LABS workers, each with a lab of its own (KH_LAB_INSTANCE), a module at a time;
# the slowest tests' times are printed at the end (what the suite's time is made of)
LABS     ?= 2
test: check deps
	$(PY) -m pytest tests/lab -n $(LABS) --dist loadfile --durations=25

check: lint
	$(PY) -m pytest tests/unit -n auto

lint: check-deps
	$(PY) -m ruff check components engine tests lab bench __main__.py
	$(PY) -m mypy components engine lab tests bench __main__.py

lab: deps
	$(PY) -m lab up --hosts $(HOSTS)
	$(PY) -m lab.deploy up --stack $(STACK)

lab-destroy: deps
	$(PY) -m lab.deploy destroy --stack $(STACK)

lab-down: deps
	$(PY) -m lab down

lab-status: deps
	$(PY) -m lab status

preview: deps
	$(PY) -m lab.deploy preview --stack dev

bench: check-deps
	$(PY) bench/preview_bench.py
