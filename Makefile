# Edge image toolkit: train, convert, report, test, deploy. `make` alone lists the targets and variables.
# Each variable has its meaning on the line above, after "## ": `make help` lists them from here.
# (Never a comment after a value: make would keep the spaces before it in the value.)

## Python that creates the virtual environment
PYTHON ?= python3
## Folder of the virtual environment
VENV ?= .venv
## Data set: an image-folder tree or cifar-10-python.tar.gz (empty: training.json's, else CIFAR-10 via Keras)
DATA ?=
## Folder for model.keras, the .tflite files and the report
OUT ?= artifacts
## train: network: cnn (the documented one), resnet8 or mobilenetv2; `.venv/bin/edge-train --help` lists their defaults
ARCH ?= cnn
## train: number of epochs (empty: the network's default, 15 for cnn)
EPOCHS ?=
## train: seed of the shuffle, the splits and the weights (convert and report reuse training.json's)
SEED ?= 0
## train: which epoch model.keras keeps: best (validation accuracy) or last
KEEP ?= best
## train: non-empty (e.g. FORCE=1) replaces an earlier run in OUT instead of refusing
FORCE ?=
## convert: training images that calibrate the int8 model
CALIBRATION ?= 500
## report: fail when int8 loses more accuracy points than this against Keras (empty: no check)
MAX_DROP ?=
## test: extra pytest arguments (e.g. -m 'not slow')
PYTEST_ARGS ?=
## fuzz: how many mutated model files `make fuzz` reads
FUZZ_CASES ?= 10000
## deploy: the device, as user@host (one device through the fleet playbook)
DEVICE ?=
## deploy, deploy-fleet: the model file to send (empty: OUT/model_VARIANT.tflite); manifest.json must sit beside it
MODEL ?=
## deploy, deploy-fleet: which of OUT's models when MODEL is empty: int8 or float32
VARIANT ?= int8
## deploy: the folder on the device, relative to the login's home (versions in DEST/models, DEST/current the active one)
DEST ?= edge-models
## deploy-fleet, rollback-fleet: the Ansible inventory of the devices (see deploy/ansible/inventory.example.yml)
INVENTORY ?=
## rollback-fleet: the version to go back to, a prefix of its model's sha256 (empty: each device's previous one)
VERSION ?=
## deploy, deploy-fleet, rollback-fleet: where the per-device summary is written as JSON
SUMMARY ?= build/fleet/summary.json
## deploy, deploy-fleet, rollback-fleet: more ansible-playbook arguments (e.g. --limit shop, -e edge_fleet_serial=2)
ANSIBLE_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_ARG := $(if $(DATA),--data "$(DATA)")
FORCE_ARG := $(if $(FORCE),--force)
EPOCHS_ARG := $(if $(EPOCHS),--epochs $(EPOCHS))
MAX_DROP_ARG := $(if $(MAX_DROP),--max-drop $(MAX_DROP))
MODEL_FILE = $(if $(MODEL),$(MODEL),$(OUT)/model_$(VARIANT).tflite)
# The fleet playbooks read deploy/ansible/ansible.cfg; the model and the wheel are passed as absolute paths.
PLAYBOOK = ANSIBLE_CONFIG=deploy/ansible/ansible.cfg $(VENV)/bin/ansible-playbook
FLEET_VARS = -e edge_model_src="$(abspath $(MODEL_FILE))" -e edge_model_wheel="$$wheel" -e edge_fleet_summary="$(SUMMARY)"
# The wheel `make wheel` built last: dist/ may hold older versions too.
NEWEST_WHEEL = wheel=$$(ls -t "$(CURDIR)"/dist/edge_image_toolkit-*.whl 2>/dev/null | head -n 1)

THIS_MAKEFILE := $(firstword $(MAKEFILE_LIST))
.DEFAULT_GOAL := help
.PHONY: help install train convert report test bench wheel deploy deploy-fleet rollback-fleet check-variant check-device check-inventory arm64-check clean

help: ## Show this list
	@echo "Usage: make [target ...] [VARIABLE=value ...]"
	@echo
	@echo "Targets:"
	@grep -E '^[a-z0-9-]+:.*## ' $(THIS_MAKEFILE) | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'
	@echo
	@echo "Variables, with their defaults:"
	@awk '/^## / {doc = substr($$0, 4); next} \
	     /^[A-Z_]+ \?=/ {value = $$0; sub(/^[A-Z_]+ \?= ?/, "", value); \
	                      printf "  %-31s %s\n", $$1 "=" value, doc} {doc = ""}' $(THIS_MAKEFILE)
	@echo
	@echo "Example: make train convert report DATA=~/datasets/cifar10-jpeg"

install: $(STAMP) ## Create the .venv virtual environment with everything (TensorFlow, ai-edge-litert, OpenCV, pytest)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@# MediaPipe, for the interoperability test only: --no-deps because it wants opencv-contrib-python,
	@# which would overwrite the camera extra's OpenCV files; its image classifier needs nothing else here.
	$(PY) -m pip install --quiet --no-deps "mediapipe==1.2.3" || \
		echo "make install: mediapipe 1.2.3 does not install here; its interoperability test will skip" >&2
	@touch $@

train: $(STAMP) ## Train the network ARCH: writes OUT/model.keras, labels.txt, training.json, accuracy.png
	EDGE_TOOLKIT_MAKE=1 $(PY) -m trainer.cli --arch "$(ARCH)" --out "$(OUT)" $(EPOCHS_ARG) --seed $(SEED) --keep "$(KEEP)" $(FORCE_ARG) $(DATA_ARG)

convert: $(STAMP) ## Export OUT/model_float32.tflite and model_int8.tflite with manifest.json
	EDGE_TOOLKIT_MAKE=1 $(PY) -m converter.cli --model "$(OUT)/model.keras" --out "$(OUT)" --calibration-size $(CALIBRATION) $(DATA_ARG)

report: $(STAMP) ## Quantization accuracy report: OUT/report.md, report.json and pictures
	EDGE_TOOLKIT_MAKE=1 $(PY) -m converter.cli report --out "$(OUT)" $(DATA_ARG) $(MAX_DROP_ARG)

test: $(STAMP) ## Run the test suite (no network, no ../shared needed)
	@$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests; failing on purpose" >&2; exit 1; fi; \
	exit $$status

bench: $(STAMP) ## Benchmarks on ../shared/datasets/cifar10-jpeg (or DATA=); see BENCHMARKS.md
	$(PY) benchmarks/bench_train.py $(DATA_ARG)
	$(PY) benchmarks/bench_convert.py --out "$(OUT)" $(DATA_ARG)
	$(PY) benchmarks/bench_runtime.py --out "$(OUT)" $(DATA_ARG)

fuzz: $(STAMP) ## Read FUZZ_CASES mutated .tflite files: tracebacks, hangs, peak memory, time per case (OUT/fuzz.json)
	$(PY) benchmarks/fuzz_models.py --cases $(FUZZ_CASES) --record "$(OUT)/fuzz.json"

# The wheel's files are dated by the last commit (SOURCE_DATE_EPOCH; 1980, zip's first date, outside git),
# so the same sources give the same sha256 and the fleet playbook does not reinstall an unchanged runtime.
wheel: $(STAMP) ## Build dist/*.whl (install on a device with: pip install "<wheel>[edge]")
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 315532800) $(PY) -m pip wheel --no-deps -w dist .

# Usage checks, run before the wheel is built: a mistyped command fails at once with exit status 2.
check-variant:
	@case "$(VARIANT)" in int8|float32) ;; *) echo "make: VARIANT must be int8 or float32, got '$(VARIANT)'" >&2; exit 2 ;; esac

check-device: check-variant
	@if [ -z "$(DEVICE)" ]; then echo "make deploy: set DEVICE=user@host (and optionally MODEL=, VARIANT=, DEST=)" >&2; exit 2; fi
	@case "$(DEVICE)" in ?*@?*) ;; *) echo "make deploy: DEVICE must be user@host, got '$(DEVICE)'" >&2; exit 2 ;; esac

check-inventory: check-variant
	@if [ -z "$(INVENTORY)" ]; then echo "make $(MAKECMDGOALS): set INVENTORY=hosts.yml (see deploy/ansible/inventory.example.yml)" >&2; exit 2; fi
	@if [ ! -f "$(INVENTORY)" ]; then echo "make $(MAKECMDGOALS): inventory $(INVENTORY) not found" >&2; exit 2; fi

deploy: check-device wheel ## One device: the fleet playbook on DEVICE=user@host alone (runtime, copy, verify, smoke test, switch)
	@$(NEWEST_WHEEL); device="$(DEVICE)"; \
	$(PLAYBOOK) -i "$${device#*@}," -e ansible_user="$${device%%@*}" -e edge_model_dir="$(DEST)" \
		$(FLEET_VARS) $(ANSIBLE_ARGS) deploy/ansible/deploy.yml

deploy-fleet: check-inventory wheel ## Every device of INVENTORY=hosts.yml: a canary, a quarter, the rest; rolls back failures; SUMMARY
	@$(NEWEST_WHEEL); $(PLAYBOOK) -i "$(INVENTORY)" $(FLEET_VARS) $(ANSIBLE_ARGS) deploy/ansible/deploy.yml

rollback-fleet: check-inventory $(STAMP) ## Every device of INVENTORY back to its previous version, or to VERSION=<sha256 prefix>
	@$(PLAYBOOK) -i "$(INVENTORY)" -e edge_model_rollback_version="$(VERSION)" -e edge_fleet_summary="$(SUMMARY)" \
		$(ANSIBLE_ARGS) deploy/ansible/rollback.yml

arm64-check: wheel ## As root: install the wheel in emulated arm64 Bookworm and Trixie (qemu), compare OUT's models with x86, the deploy playbook over SSH
	$(PY) deploy/arm64_check.py --out "$(OUT)"

clean: ## Remove build outputs (keeps OUT and .venv)
	rm -rf build dist *.egg-info .pytest_cache
