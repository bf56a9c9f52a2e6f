# make run   - build, then serve the demo app (examples/) on 127.0.0.1
# make test  - build, then run the whole suite
# make test-asan - the suite against an ASan+UBSan build of _core
# make bench - the benchmarks in bench/, tables for the README

PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
CSRC := $(wildcard csrc/*.c csrc/*.h csrc/*/*.c csrc/*/*.h)
PYTEST_ARGS ?=

.PHONY: all build run test test-asan bench clean

all: build

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77,<82' wheel 'greenlet>=3'
	$(PY) -m pip install -q --no-build-isolation -e '.[test,gunicorn,uvloop,bench]'
	touch $@

build: $(VENV)/.installed .build-stamp

.build-stamp: $(CSRC) setup.py
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

# ASan needs its runtime loaded first and pymalloc off to see every block.
test-asan: $(VENV)/.installed
	AIOPYRAMID_SANITIZE=1 $(PY) setup.py -q build_ext --inplace --force
	rm -f .build-stamp
	ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	AIOPYRAMID_ASAN=1 $(PY) -m pytest $(PYTEST_ARGS)
	$(PY) setup.py -q build_ext --inplace --force
	touch .build-stamp

# bridge.py prints a missed target as a result (--strict makes it exit 1);
# the HTTP bench needs wrk and gevent: it says how to get them
bench: build
	$(PY) bench/bridge.py
	$(PY) bench/http_bench.py

clean:
	rm -rf build dist .build-stamp aiopyramid/*.so *.egg-info
