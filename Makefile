# Quick start: `make demo` and `make test`. Both create their virtualenvs and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Boards run NumPy 1.x or 2.x: `make test` runs the suite on both (pyarrow 21 and newer, which
# Ray Data imports, need NumPy 2).
VENV1  := .venv-numpy1
STAMP1 := $(VENV1)/.installed-stamp
# nudenet ships the YOLOv8n 320n.onnx the demo and tests run; rapidocr-onnxruntime the PP-OCRv4
# models `ez-rknn compare` is tested on. Their own deps (opencv...) are not needed.
MODEL_WHEELS := nudenet rapidocr-onnxruntime==1.4.4
# The tests build a C emulator of the NPU runtime: they need a C compiler.
NEED_GCC := @command -v gcc >/dev/null || (apt-get update -qq && apt-get install -y -qq gcc)

.PHONY: demo test test-numpy2 test-numpy1 lint bench clean

$(STAMP): pyproject.toml Makefile
	$(NEED_GCC)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@

$(STAMP1): pyproject.toml Makefile
	$(NEED_GCC)
	$(PYTHON) -m venv $(VENV1)
	$(VENV1)/bin/python -m pip install --quiet --upgrade pip
	$(VENV1)/bin/python -m pip install --quiet -e ".[test]" "numpy<2" "pyarrow<21"
	$(VENV1)/bin/python -m pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $@

demo: $(STAMP)
	$(BIN)/ez-rknn demo

test: test-numpy1 test-numpy2

test-numpy2: $(STAMP)
	$(BIN)/python -m pytest

test-numpy1: $(STAMP1)
	$(VENV1)/bin/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The figures of benchmarks/README.md (several minutes; not part of `make test`).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_rknn_emulator.py
	$(BIN)/python benchmarks/bench_rknn3_emulator.py
	$(BIN)/python benchmarks/bench_zero_copy.py
	$(BIN)/python benchmarks/bench_vs_ztu.py
	$(BIN)/python benchmarks/bench_worker_gap.py
	$(BIN)/python benchmarks/bench_native_sequence.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_ray_serve.py --compute-ms 50
	$(BIN)/python benchmarks/bench_ray_serve.py --compute-ms 20
	$(BIN)/python benchmarks/soak.py --seconds 60

clean:
	rm -rf $(VENV) $(VENV1) tests/npu_emulator/build
