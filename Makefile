# Edge image toolkit: train, convert, report, test, deploy. `make` alone lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DATA ?=
OUT ?= artifacts
EPOCHS ?= 15
SEED ?= 0
CALIBRATION ?= 500
MAX_DROP ?=
PYTEST_ARGS ?=
DEVICE ?=
MODEL ?= $(OUT)/model_int8.tflite
DEST ?= edge-models

DATA_ARG := $(if $(DATA),--data "$(DATA)")
MAX_DROP_ARG := $(if $(MAX_DROP),--max-drop $(MAX_DROP))

.DEFAULT_GOAL := help
.PHONY: help install train convert report test bench wheel deploy clean

help: ## Show this list
	@echo "Usage: make [target] [DATA=path] [OUT=$(OUT)] [EPOCHS=$(EPOCHS)] [SEED=$(SEED)]"
	@echo
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-9s %s\n", $$1, $$2}'
	@echo
	@echo "DATA: an image-folder tree or cifar-10-python.tar.gz (default: CIFAR-10 downloaded by Keras)."
	@echo "Example: make train convert report DATA=~/datasets/cifar10-jpeg"

install: $(STAMP) ## Create the .venv virtual environment with everything (TensorFlow, ai-edge-litert, OpenCV, pytest)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

train: $(STAMP) ## Train the CNN: writes OUT/model.keras, labels.txt, training.json, accuracy.png
	$(PY) -m trainer.cli --out "$(OUT)" --epochs $(EPOCHS) --seed $(SEED) $(DATA_ARG)

convert: $(STAMP) ## Export OUT/model_float32.tflite and model_int8.tflite with manifest.json
	$(PY) -m converter.cli --model "$(OUT)/model.keras" --out "$(OUT)" --calibration-size $(CALIBRATION) $(DATA_ARG)

report: $(STAMP) ## Quantization accuracy report: OUT/report.md, report.json and pictures
	$(PY) -m converter.cli report --out "$(OUT)" $(DATA_ARG) $(MAX_DROP_ARG)

test: $(STAMP) ## Run the test suite (no network, no ../shared needed)
	@$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests; failing on purpose" >&2; exit 1; fi; \
	exit $$status

bench: $(STAMP) ## Benchmarks on ../shared/datasets/cifar10-jpeg (or DATA=); see BENCHMARKS.md
	$(PY) benchmarks/bench_train.py $(DATA_ARG)
	$(PY) benchmarks/bench_convert.py --out "$(OUT)" $(DATA_ARG)
	$(PY) benchmarks/bench_runtime.py --out "$(OUT)" $(DATA_ARG)

wheel: $(STAMP) ## Build dist/*.whl (install on a device with: pip install "<wheel>[edge]")
	$(PY) -m pip wheel --no-deps -w dist .

deploy: ## Copy MODEL (default int8) and its manifest to DEVICE=user@host:DEST over SSH, verify, smoke-test
	@if [ -z "$(DEVICE)" ]; then echo "make deploy: set DEVICE=user@host (and optionally MODEL=, DEST=)" >&2; exit 2; fi
	sh deploy/deploy.sh "$(DEVICE)" "$(MODEL)" "$(DEST)"

clean: ## Remove build outputs (keeps OUT and .venv)
	rm -rf build dist *.egg-info .pytest_cache
