"""The loraplane training worker: TRL's SFTTrainer with a PEFT LoRA adapter, driven by one config file.

TRL does the training. This package adds only what a training pod needs around it: reading the
config the operator mounts, progress as Prometheus metrics, checkpoint resume, a vLLM-ready adapter,
an optional merged model, and a result in the pod's termination message.

Importing the package, `config`, `errors`, `result`, `resume`, `progress` or `data` does not import
torch (the operator's tests import `config`); `train` and `merge` do.
"""

__version__ = "0.1.0"
