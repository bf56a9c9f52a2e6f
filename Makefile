# make run   - build, then serve the demo app (examples/) on 127.0.0.1
# make test  - build, then run the whole suite
# make test-asan - the suite against an ASan+UBSan build of _core
# make test-versions - the suite under every other supported Python found
#              (each in its own venv, .venv312, .venv313; one not installed
#              is skipped, and said so)
# make bench - the benchmarks in bench/, tables for the README
# make soak  - one worker under 1,000,000 mixed requests, then 100,000
#              clients gone at random stages (SOAK_ARGS="--requests N ...")

PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
CSRC := $(wildcard csrc/*.c csrc/*.h csrc/*/*.c csrc/*/*.h)
PYTEST_ARGS ?=
# one stamp per venv: each venv's Python builds its own _core (the file name
# carries the ABI tag, so several builds sit side by side in aiopyramid/)
BUILD_STAMP := $(VENV)/.build-stamp

.PHONY: all deps build run test test-asan test-versions bench fuzz soak clean uwsgi

all: build

# Debian packages the build and the tests need, installed when missing (one
# apt-get update, only then): zlib's headers (permessage-deflate), chromium
# (the chat example's browser test)
deps:
	@missing=""; \
	[ -f /usr/include/zlib.h ] || missing="$$missing zlib1g-dev"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77,<82' wheel 'greenlet>=3'
	$(PY) -m pip install -q --no-build-isolation -e '.[test,gunicorn,uvloop,bench]'
	touch $@

build: deps $(VENV)/.installed $(BUILD_STAMP)

$(BUILD_STAMP): $(CSRC) setup.py $(VENV)/.installed
	$(PY) setup.py -q build_ext --inplace --force
	touch $@

# uWSGI with its asyncio and greenlet plugins compiled in, into the venv
# (tests/test_uwsgi.py runs it); skipped when the venv's uwsgi has both.
# The greenlet plugin includes <greenlet/greenlet.h>: pip puts it under
# <venv>/include/site/pythonX.Y (recent greenlet wheels also in the package
# folder, so site-packages is searched too); --no-cache-dir: pip's wheel
# cache could hand back a build without the plugins.
UWSGI_VERSION := 2.0.31
.PHONY: uwsgi
test test-asan: uwsgi
uwsgi: $(VENV)/.installed
	@if $(abspath $(VENV))/bin/uwsgi --plugins-list 2>&1 | grep -qx asyncio && \
	    $(abspath $(VENV))/bin/uwsgi --plugins-list 2>&1 | grep -qx greenlet; then :; else \
	  echo "building uWSGI $(UWSGI_VERSION) with its asyncio and greenlet plugins (about a minute)"; \
	  UWSGI_PROFILE=asyncio \
	  CFLAGS="$$($(PY) -c 'import os, sys, sysconfig; print("-I%s/include/site/python%d.%d -I%s" % (sys.prefix, *sys.version_info[:2], sysconfig.get_path("purelib")))')" \
	  $(PY) -m pip install -q --no-binary uwsgi --no-cache-dir uwsgi==$(UWSGI_VERSION); fi

run: build
	$(PY) examples/serve.py

test: build
	$(PY) -X dev -m pytest $(PYTEST_ARGS)

# The Pythons the package supports (pyproject.toml's classifiers); each
# other than $(PYTHON)'s is looked for in pyenv's versions, then on PATH
SUPPORTED_PYTHONS := 3.11 3.12 3.13
test-versions:
	@main=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	failed=""; \
	for v in $(SUPPORTED_PYTHONS); do \
	  [ "$$v" = "$$main" ] && continue; \
	  py=$$(ls -d $$HOME/.pyenv/versions/$$v.*/bin/python 2>/dev/null | sort -V | tail -n 1); \
	  [ -n "$$py" ] || py=$$(command -v python$$v || true); \
	  if [ -z "$$py" ]; then echo "test-versions: Python $$v is not installed: skipped"; continue; fi; \
	  echo "test-versions: Python $$v ($$py), venv .venv$$(echo $$v | tr -d .)"; \
	  start=$$(date +%s); \
	  $(MAKE) --no-print-directory test PYTHON=$$py VENV=.venv$$(echo $$v | tr -d .) \
	    PYTEST_ARGS="$(PYTEST_ARGS)" || failed="$$failed $$v"; \
	  echo "test-versions: Python $$v took $$(( $$(date +%s) - start )) s"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-versions: failed under$$failed"; exit 1; fi

# ASan needs its runtime loaded first and pymalloc off to see every block.
test-asan: deps $(VENV)/.installed uwsgi
	AIOPYRAMID_SANITIZE=1 $(PY) setup.py -q build_ext --inplace --force
	rm -f $(BUILD_STAMP)
	ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	AIOPYRAMID_ASAN=1 $(PY) -m pytest $(PYTEST_ARGS)
	$(PY) setup.py -q build_ext --inplace --force
	touch $(BUILD_STAMP)

# bridge.py prints a missed target as a result (--strict makes it exit 1);
# the HTTP bench needs wrk and gevent: it says how to get them; peers.py
# installs its peers into build/bench-peers (and wrk, libev-dev with apt-get)
bench: build
	$(PY) bench/bridge.py
	$(PY) bench/http_bench.py
	$(PY) bench/peers.py

# The websocket frame reader and inflater under libFuzzer with ASan+UBSan
# (csrc/websocket/fuzz/), for FUZZ_TIME seconds; exits non-zero on a finding
# (the crashing input is left in build/fuzz/).  Needs clang: installed here
# when missing.
FUZZ_TIME ?= 60
WS_FUZZ_SRC := csrc/websocket/fuzz/fuzz_websocket.c csrc/websocket/frame.c \
	csrc/websocket/unmask.c csrc/websocket/utf8.c csrc/websocket/deflate.c
fuzz: deps
	@command -v clang >/dev/null || { apt-get update && apt-get install -y clang; }
	mkdir -p build/fuzz/corpus
	clang -Wall -Wextra -g -O1 -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=undefined -Icsrc/websocket \
		$(WS_FUZZ_SRC) -lz -o build/fuzz/websocket
	python3 csrc/websocket/fuzz/seeds.py build/fuzz/seeds
	cd build/fuzz && ./websocket -max_total_time=$(FUZZ_TIME) -max_len=70000 \
		-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 corpus seeds

SOAK_ARGS ?=
soak: build
	@command -v wrk >/dev/null || { echo "make soak needs wrk (apt-get install wrk)"; exit 1; }
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf build dist .build-stamp $(VENV)/.build-stamp aiopyramid/*.so *.egg-info
