# aribbps: set-up, tests and benchmarks. `make demo` and `make test` work on a
# fresh clone: they create .venv, install, and run.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch (users with a GPU install their own CUDA build).
TORCH_PIN ?= torch==2.13.0
CXX ?= g++
CODER_SRC := $(filter-out coder/test_coder.cpp coder/binding.cpp,$(sort $(wildcard coder/*.cpp)))
CODER_HDR := $(wildcard coder/*.hpp)

.PHONY: install install-test test coder-test asan-test demo bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(PY) setup.py pyproject.toml $(CODER_SRC) $(CODER_HDR) coder/binding.cpp
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[bench]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# The C++ core alone (no Python), plain and under ASan+UBSan.
build/test_coder: coder/test_coder.cpp $(CODER_SRC) $(CODER_HDR)
	mkdir -p build
	$(CXX) -std=c++17 -O2 -Wall -Wextra -Werror coder/test_coder.cpp $(CODER_SRC) -o $@ -pthread

build/test_coder_asan: coder/test_coder.cpp $(CODER_SRC) $(CODER_HDR)
	mkdir -p build
	$(CXX) -std=c++17 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
	    coder/test_coder.cpp $(CODER_SRC) -o $@ -pthread

coder-test: build/test_coder build/test_coder_asan
	./build/test_coder
	./build/test_coder_asan

# The Python coder tests against an ASan+UBSan build of the extension.
asan-test: install-test
	bash coder/run_asan_tests.sh $(PY)

# Triton kernels run in the interpreter on the CPU (small shapes); GPU-only tests skip.
test: install-test coder-test asan-test
	TRITON_INTERPRET=1 $(PY) -m pytest -q --benchmark-disable

demo: install
	$(PY) -m aribbps.demo

bench: install-test
	$(PY) bench/bench_coder.py

clean:
	rm -rf build *.egg-info aribbps/*.so .pytest_cache
