# The operator: kopf + the Kubernetes client. No torch, no worker code.
# Build from the repository root: `make images` (podman, buildah or docker), or
#   podman build -f docker/operator.Dockerfile -t ghcr.io/loraplane/operator:0.1.0 .
# PYTHON_IMAGE is any image with Python >= 3.11 and pip on PATH as `python`/`pip` (a mirror's copy
# of python:3.11-slim, or a base of your own).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

# Set only by `make images` with BUILD_CA_BUNDLE (a proxy's CA, mounted for the build, not kept).
ARG PIP_CERT
WORKDIR /app
# Dependencies first, pinned by the same file the tests use, so code changes keep this layer.
COPY requirements/operator.txt /tmp/operator.txt
RUN pip install -r /tmp/operator.txt && rm /tmp/operator.txt

# Only the operator package: the image must not carry the worker (torch) or the dev cluster.
COPY operator/loraplane /app/loraplane

# The chart runs it as this uid with a read-only root filesystem (/tmp is an emptyDir). The uid needs
# a passwd entry: kopf names itself after the user (getpass), and an unknown uid stops it at start.
RUN groupadd --system --gid 65532 loraplane \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin loraplane
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["kopf", "run", "--standalone", "-m", "loraplane.main"]
CMD ["--all-namespaces"]
