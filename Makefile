# The README's two commands: `make demo` and `make test`. Everything they need is installed
# here, into .venv, from the package registries: `demo` only the package itself (no
# dependencies), `test` the test toolchain and every optional extra, so the suite runs them all.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Every optional extra of pyproject.toml: the tests exercise all of them.
EXTRAS := test,numpy,logs
PKG_STAMP  := $(VENV)/.installed-package
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint typecheck unit bench clean test-versions rsyslog

# The forwarding tests (ashmem.logd.forward) talk to a real rsyslogd with RELP and TLS: install
# the Debian packages when one is missing (as root, or through sudo). Where that is impossible
# the tests skip, and fail under CI.
RSYSLOG_PKGS := rsyslog rsyslog-relp rsyslog-openssl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

rsyslog:
	@missing=""; for p in $(RSYSLOG_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "installing$$missing"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing \
	      || echo "could not install$$missing: the rsyslog forwarding tests will skip (fail under CI)"; \
	  else echo "no apt-get: the rsyslog forwarding tests will skip (fail under CI)"; fi; \
	fi

# The package builds one optional C file (ashmem/_speedups.c): rebuilt when it changes.
$(PKG_STAMP): pyproject.toml setup.py src/ashmem/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(PKG_STAMP)

$(TEST_STAMP): $(PKG_STAMP) pyproject.toml setup.py Makefile
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(TEST_STAMP)

demo: $(PKG_STAMP)
	$(BIN)/ashmem demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# Where a C compiler is found, the install must have built ashmem._speedups: a test fails
# otherwise, instead of every binder call silently taking the slower pure-Python receive.
HAVE_CC := $(shell command -v cc >/dev/null 2>&1 && echo 1)

unit: $(TEST_STAMP) rsyslog
	ASHMEM_REQUIRE_SPEEDUPS=$(HAVE_CC) $(BIN)/python -m pytest -q

test: lint typecheck unit

# The benchmarks' own peers and plotting (joblib, matplotlib): the `bench` extra, kept out of
# EXTRAS so that `make test` does not install them.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/run_all.py

# The suite again under the oldest and newest other CPythons this machine has (pyenv), if any:
# 3.10 is the floor we promise, 3.13+ takes other mmap paths (trackfd, PEP 688 windows).
OTHER_PYTHONS := $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python3 $(HOME)/.pyenv/versions/3.13.*/bin/python3)

test-versions: rsyslog
	@for py in $(OTHER_PYTHONS); do \
	  v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  echo "== Python $$v: $$py"; \
	  [ -x .venv-$$v/bin/python ] || $$py -m venv .venv-$$v || exit 1; \
	  .venv-$$v/bin/python -m pip install --quiet -e '.[$(EXTRAS)]' || exit 1; \
	  ASHMEM_REQUIRE_SPEEDUPS=$(HAVE_CC) .venv-$$v/bin/python -m pytest -q -p no:cacheprovider tests || exit 1; \
	done

clean:
	rm -rf $(VENV) .venv-3.* build .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -f src/ashmem/_speedups.*.so
