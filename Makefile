# One-shot entry points. `make setup` builds .venv (torch/torchvision first, pinned: see ../shared/ENV.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
RUN_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: setup mobile-model test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[ncnn,coreml,test]"
	@echo "Installed:"; $(PY) -m pip list --format=freeze 2>/dev/null | grep -iE '^(torch|torchvision|timm|numpy|onnx|onnxruntime|onnxsim|ncnn|pnnx|coremltools|opencv-python-headless|pydantic|pytest)=='
	@touch $@

mobile-model: setup
	$(PY) -m pipeline run --profile $(PROFILE) $(RUN_ARGS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pipeline run --profile $(PROFILE) --from benchmark $(RUN_ARGS)

clean:
	rm -rf runs build .pytest_cache
