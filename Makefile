# make run   - build, then serve the demo app (examples/) on 127.0.0.1
# make test  - build, then run the whole suite
# make test-asan - the suite against an ASan+UBSan build of _core
# make bench - the benchmarks in bench/, tables for the README
# make soak  - one worker under 1,000,000 mixed requests, then 100,000
#              clients gone at random stages (SOAK_ARGS="--requests N ...")

PYTHON ?= python3
VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
CSRC := $(wildcard csrc/*.c csrc/*.h csrc/*/*.c csrc/*/*.h)
PYTEST_ARGS ?=

.PHONY: all build run test test-asan bench soak clean

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

SOAK_ARGS ?=
soak: build
	@command -v wrk >/dev/null || { echo "make soak needs wrk (apt-get install wrk)"; exit 1; }
	$(PY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf build dist .build-stamp aiopyramid/*.so *.egg-info
