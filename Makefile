# Quick start: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench test-numpy1 clean

$(STAMP): pyproject.toml Makefile
	@# The tests build a C emulator of the NPU runtime: they need a C compiler.
	@command -v gcc >/dev/null || (apt-get update -qq && apt-get install -y -qq gcc)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	# nudenet ships the YOLOv8n 320n.onnx the demo and tests run; its own deps (opencv) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps nudenet
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ez-rknn demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The figures of benchmarks/README.md (several minutes; not part of `make test`).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_rknn_emulator.py
	$(BIN)/python benchmarks/bench_zero_copy.py
	$(BIN)/python benchmarks/soak.py --seconds 60

# The same suite against NumPy 1.x, in its own virtualenv.
test-numpy1:
	$(PYTHON) -m venv .venv-np1
	.venv-np1/bin/python -m pip install --quiet -e ".[test]" "numpy<2"
	.venv-np1/bin/python -m pip install --quiet --no-deps nudenet
	.venv-np1/bin/python -m pytest

clean:
	rm -rf $(VENV) .venv-np1 tests/npu_emulator/build
