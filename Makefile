# loraplane: `make test` sets up everything on a fresh machine and runs every check;
# `make demo` runs the whole story on a local cluster. Heavy downloads and builds are cached under
# ~/.cache/loraplane (LORAPLANE_CACHE), keyed by version, so a fresh clone reuses them.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/worker:$(CURDIR)/devcluster

.PHONY: help test setup images push-images lint types unit venv binaries crds check-crds cluster-up cluster-down demo demo-down bench clean

help:
	@echo "make test          set up (venv, Kubernetes binaries) and run lint, types and every test"
	@echo "make demo          train an adapter and serve it from vLLM on a local cluster"
	@echo "                   (STORAGE=s3: with an object store only, no volume claim)"
	@echo "make crds          regenerate CRDs and the SFTConfig field list from the models"
	@echo "make images        build the operator and worker images (push-images: and push them)"
	@echo "make cluster-up    start the local control plane (cluster-down stops it)"
	@echo "make bench         benchmarks, printed as ratios against a baseline from the same run"

test:
	@scripts/test.sh

venv:
	@scripts/setup-venv.sh >/dev/null

# The venv and the Kubernetes binaries, built side by side with progress lines (what `make test` and
# `make demo` run first).
setup:
	@scripts/setup.sh >/dev/null

binaries:
	@devcluster/build-binaries.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: venv
	$(VENV)/bin/mypy operator/loraplane worker/loraplane_worker devcluster/loraplane_devcluster

unit: venv
	$(PY) -m pytest tests/unit

# IMAGE_REGISTRY, IMAGE_TAG, PYTHON_IMAGE, CUDA_IMAGE, IMAGE_TOOL: see scripts/images.sh.
images:
	@scripts/images.sh

push-images:
	@PUSH=1 scripts/images.sh

crds: venv
	$(PY) -m loraplane.crdgen --out crds --out charts/loraplane/files/crds
	$(PY) -m loraplane.sft_fields
	$(PY) -m loraplane.apidocs > docs/api.md

cluster-up:
	@bin_dir=$$(scripts/setup.sh) && LORAPLANE_BIN_DIR=$$bin_dir $(PY) -m loraplane_devcluster up

cluster-down: venv
	@$(PY) -m loraplane_devcluster down

# DEMO_ARGS=--existing-cluster runs the same steps on the cluster of the current KUBECONFIG context.
# STORAGE=s3 keeps everything in an object store (versitygw beside the local cluster), no claim.
# The demo's cluster has no kube-proxy or CoreDNS (it reaches pods by their addresses), so it does
# not wait for their build.
demo:
	@bin_dir=$$(SETUP_BINARIES=control-plane scripts/setup.sh) && LORAPLANE_BIN_DIR=$$bin_dir $(PY) -m loraplane_devcluster demo $(if $(STORAGE),--storage $(STORAGE)) $(DEMO_ARGS)

demo-down: venv
	@$(PY) -m loraplane_devcluster down

bench:
	@bin_dir=$$(scripts/setup.sh) && LORAPLANE_BIN_DIR=$$bin_dir scripts/bench.sh

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache
