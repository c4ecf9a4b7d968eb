"""loraplane: train LoRA adapters with TRL and serve them from vLLM, on Kubernetes."""

GROUP = "loraplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
