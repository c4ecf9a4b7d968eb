# The training worker: TRL + PEFT on CUDA torch. No kopf, no Kubernetes client, and of the operator's
# code only the API models it shares with the worker (loraplane.api: pydantic only).
# Build from the repository root: `make images` (podman, buildah or docker), or
#   podman build -f docker/worker.Dockerfile -t ghcr.io/loraplane/worker:0.1.0 .
# The PyPI torch wheel brings its own CUDA libraries; the CUDA base image supplies the rest of the
# user-space stack and the conventions (NVIDIA_* variables) the device plugin expects. CUDA_IMAGE is
# any Debian/Ubuntu image with apt and Python >= 3.11 packages (a mirror's copy of it, or a plain
# Debian base for a CPU-only worker).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# Set only by `make images` with BUILD_CA_BUNDLE (a proxy's CA, mounted for the build, not kept).
ARG PIP_CERT
WORKDIR /src
# Dependencies first, pinned by the same file the tests use, so code changes keep this layer.
COPY requirements/worker.txt requirements/worker.txt
RUN pip install -r requirements/worker.txt \
 # QLoRA (quantization: 4bit|8bit) loads the base model through bitsandbytes.
 && pip install "bitsandbytes>=0.46"

# Only the shared API package (with the root package it lives in, which holds constants only) and the
# worker: the image must not carry the operator's handlers or the dev cluster (ruff's banned-api rules
# in worker/loraplane_worker/ruff.toml keep the worker from needing them).
ENV PYTHONPATH=/opt/loraplane
COPY operator/loraplane/__init__.py /opt/loraplane/loraplane/__init__.py
COPY operator/loraplane/api /opt/loraplane/loraplane/api
COPY worker/loraplane_worker /opt/loraplane/loraplane_worker
RUN python -c "import loraplane.api.worker, loraplane_worker.config" && rm -rf /src

# Non-root; the output volume and HF_HOME must be writable by this uid (fsGroup in the pod spec).
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin worker \
 && mkdir -p /cache/huggingface && chown -R 1000:1000 /cache
USER 1000:1000
WORKDIR /home/worker

# Prometheus metrics (metrics.port in the config).
EXPOSE 9400
ENTRYPOINT ["python", "-m", "loraplane_worker"]
CMD ["--config", "/etc/loraplane/config.yaml"]
