"""Names and labels of the objects loraplane creates, in one place.

A LoraTrainingJob's name is at most 52 characters (the CRD says so), which keeps `<name>-config`,
`<name>-train` and the Job controller's pod names within Kubernetes' limits.
"""

from __future__ import annotations

from loraplane import GROUP

LABEL_TRAINING_JOB = f"{GROUP}/training-job"
LABEL_TRAINING_JOB_UID = f"{GROUP}/training-job-uid"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Kueue's own labels on a Job it should queue.
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_KUEUE_PRIORITY = "kueue.x-k8s.io/priority-class"
MANAGED_BY = "loraplane"

WORKER_CONTAINER = "worker"
CONFIG_KEY = "config.yaml"
CONFIG_MOUNT = "/etc/loraplane"
# Every PersistentVolumeClaim a training pod uses is mounted at /mnt/claims/<claim name>; serving pods
# that mount the same claim at the same place load adapters by the same path.
CLAIMS_MOUNT = "/mnt/claims"


def config_map_name(job_name: str) -> str:
    return f"{job_name}-config"


def batch_job_name(job_name: str) -> str:
    return f"{job_name}-train"


def rendezvous_service_name(job_name: str) -> str:
    """The headless Service of a multi-node run: the pods' subdomain (a Service and a Job may share a
    name; at most 58 characters, a DNS label)."""
    return f"{job_name}-train"


def node_hostname(job_name: str, index: int) -> str:
    """The hostname the Job controller gives an Indexed Job's pod: `<job>-<index>`."""
    return f"{batch_job_name(job_name)}-{index}"


def claim_mount_path(claim_name: str) -> str:
    return f"{CLAIMS_MOUNT}/{claim_name}"


def path_in_claim(claim_name: str, path: str) -> str:
    """Where `path` inside `claim_name` appears in a pod that mounts claims the loraplane way."""
    return f"{claim_mount_path(claim_name)}/{path}".rstrip("/")


def run_subpath(output_path: str, uid: str) -> str:
    """The folder of one run inside the output claim: includes the job's UID, so a re-created job of
    the same name never resumes another run's checkpoints."""
    return f"{output_path.strip('/')}/{uid}".lstrip("/")
