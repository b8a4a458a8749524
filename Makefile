# The two commands: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.medshift_installed

.PHONY: install demo test test-fast bench lint ext ctest clean

$(PY):
	python3 -m venv $(VENV)

# torch==2.13.0 only when the venv has no torch (a CUDA torch already there is left alone).
$(STAMP): $(PY) pyproject.toml setup.py
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install --no-build-isolation -e ".[dev]"
	$(PIP) install --no-deps torchcfm || echo "torchcfm not installed: bench_train.py skips its anchor"
	@$(PY) -c "from medshift_fast._backend import extension_status as s; print(s()['detail'])"
	@touch $(STAMP)

install: $(STAMP)

ext: install
	flock /tmp/medshift_fast_build.lock $(PY) setup.py -q build_ext --inplace

demo: install
	$(PY) -m medshift_fast demo --out runs/demo --overwrite

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m pytest benchmarks -o python_files='bench_*.py' --benchmark-json=benchmarks/results/$$(hostname -s 2>/dev/null || echo cpu).json -q $(BENCH_ARGS)
	$(PY) benchmarks/summarize.py benchmarks/results

ctest:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release && cmake --build build/cmake -j2 && ctest --test-dir build/cmake --output-on-failure

lint: install
	$(VENV)/bin/ruff check medshift_fast kernels tests benchmarks

clean:
	rm -rf build *.egg-info medshift_fast/_C*.so
