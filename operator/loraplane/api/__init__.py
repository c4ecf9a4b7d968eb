"""The loraplane API: pydantic models that are the single source of truth for the CRDs.

Nothing here imports kopf, the Kubernetes client or torch, so the worker, the CRD generator and the
tests can all load it cheaply.
"""

from loraplane.api.adapter import LoraAdapter, LoraAdapterSpec, LoraAdapterStatus
from loraplane.api.common import Condition
from loraplane.api.training_job import LoraTrainingJob, LoraTrainingJobSpec, LoraTrainingJobStatus

__all__ = [
    "Condition",
    "LoraAdapter",
    "LoraAdapterSpec",
    "LoraAdapterStatus",
    "LoraTrainingJob",
    "LoraTrainingJobSpec",
    "LoraTrainingJobStatus",
]
