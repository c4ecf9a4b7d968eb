"""The ConfigMap and batch/v1 Job that run one LoraTrainingJob."""

from __future__ import annotations

from typing import Any

import yaml

from loraplane import naming
from loraplane.api.storage import S3CredentialsSecret, S3Location, merged
from loraplane.api.training_job import DataSource, LoraTrainingJob
from loraplane.api.worker import (
    INPUT_ERROR_EXIT_CODE,
    NNODES_ENV,
    POD_FQDN_ENV,
    RDZV_ENDPOINT_ENV,
    RDZV_ID_ENV,
    RDZV_PORT,
    RDZV_TIMEOUT_ENV,
    RENDEZVOUS_TIMEOUT_EXIT_CODE,
    TERMINATION_MESSAGE_PATH,
    TERMINATION_MESSAGE_PATH_ENV,
    DatasetInput,
    EvalDatasetInput,
    MetricsEndpoint,
    ModelLocation,
    OutputLocation,
    WorkerInput,
)
from loraplane.settings import Settings

WORKER_UID = 1000
# The pod-local disk (an emptyDir) that object-store inputs are copied to and outputs written on
# before they are uploaded: a job whose locations are all in the store mounts no claim.
LOCAL_MOUNT = "/data"
LOCAL_MODEL = f"{LOCAL_MOUNT}/model"
LOCAL_DATASET = f"{LOCAL_MOUNT}/dataset"
LOCAL_EVAL_DATASET = f"{LOCAL_MOUNT}/eval-dataset"
LOCAL_OUTPUT = f"{LOCAL_MOUNT}/output"
# The standard variables the worker's store client reads (loraplane_worker.storage).
AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a variable name, not a secret
AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"  # noqa: S105 - a variable name, not a secret


def owner_labels(job: LoraTrainingJob) -> dict[str, str]:
    return {
        naming.LABEL_TRAINING_JOB: job.metadata["name"],
        naming.LABEL_TRAINING_JOB_UID: job.metadata["uid"],
        naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
    }


def s3_fields(job: LoraTrainingJob) -> dict[str, S3Location]:
    """The spec's object-store locations by field, as written (connections not merged yet)."""
    spec = job.spec
    found = {
        "spec.baseModel.s3": spec.base_model.s3,
        "spec.dataset.s3": spec.dataset.s3,
        "spec.evalDataset.s3": spec.eval_dataset.s3 if spec.eval_dataset is not None else None,
        "spec.output.s3": spec.output.s3,
    }
    return {field: location for field, location in found.items() if location is not None}


def s3_locations(job: LoraTrainingJob) -> list[S3Location]:
    return list(s3_fields(job).values())


def store_location(location: S3Location, settings: Settings, uri: str | None = None) -> S3Location:
    """`location` with its connection filled in from the chart's cluster-wide defaults."""
    return S3Location(uri=uri or location.uri, connection=merged(location.connection, settings.object_store))


def credentials_by_field(job: LoraTrainingJob, settings: Settings) -> dict[str, S3CredentialsSecret | None]:
    """The credentials Secret each store location uses, after the chart defaults (None: the pod's
    own identity)."""
    return {
        field: merged(location.connection, settings.object_store).credentials_secret
        for field, location in s3_fields(job).items()
    }


def credentials_secrets(job: LoraTrainingJob, settings: Settings) -> list[S3CredentialsSecret]:
    """The distinct credentials Secrets the job's store locations name."""
    found: list[S3CredentialsSecret] = []
    for secret in credentials_by_field(job, settings).values():
        if secret is not None and secret not in found:
            found.append(secret)
    return found


def run_uri(job: LoraTrainingJob) -> str:
    """This run's folder in the store: `<output.s3.uri>/<job uid>`."""
    assert job.spec.output.s3 is not None
    return S3Location(uri=job.spec.output.s3.uri).path.child(job.metadata["uid"]).uri


def output_dir(job: LoraTrainingJob) -> str:
    volume = job.spec.output.volume
    if volume is None:  # the store: written on local disk first, uploaded as it is saved
        return LOCAL_OUTPUT
    return naming.path_in_claim(volume.claim_name, naming.run_subpath(volume.path, job.metadata["uid"]))


def base_model_name(job: LoraTrainingJob) -> str:
    """What the serving side calls the base model: as the spec's publication says, else the Hugging
    Face id, else its path in the claim."""
    if job.spec.adapter is not None and job.spec.adapter.base_model:
        return job.spec.adapter.base_model
    if job.spec.base_model.s3 is not None:
        # No path the serving pods share: the URI says what was trained on until the spec names it.
        return job.spec.base_model.s3.uri
    return model_location(job)


def model_location(job: LoraTrainingJob) -> str:
    """Where the worker loads the base model from: the Hugging Face id, or its path in the claim."""
    source = job.spec.base_model
    if source.name is not None:
        return source.name
    if source.s3 is not None:
        return LOCAL_MODEL
    assert source.volume is not None  # the CRD's CEL rule: exactly one source
    return naming.path_in_claim(source.volume.claim_name, source.volume.path)


def data_input(source: DataSource, settings: Settings, local: str) -> dict[str, Any]:
    """A data source as the worker reads it: files in a claim by their path in the pod, files in the
    store copied to `local` first (with the chart's connection defaults)."""
    section = source.model_dump(exclude={"volume"}, exclude_none=True)
    if source.volume is not None:
        section["path"] = naming.path_in_claim(source.volume.claim_name, source.volume.path)
    if source.s3 is not None:
        section["s3"], section["path"] = store_location(source.s3, settings), local
    return section


def worker_input(job: LoraTrainingJob, settings: Settings) -> WorkerInput:
    """The worker's input: the spec's own groups as they are, with the paths only the operator knows."""
    spec = job.spec
    eval_dataset = spec.eval_dataset
    model_s3 = spec.base_model.s3
    return WorkerInput(
        model=ModelLocation(
            name_or_path=model_location(job),
            revision=spec.base_model.revision,
            s3=store_location(model_s3, settings) if model_s3 is not None else None,
        ),
        dataset=DatasetInput.model_validate(data_input(spec.dataset, settings, LOCAL_DATASET)),
        eval_dataset=(
            EvalDatasetInput.model_validate(data_input(eval_dataset, settings, LOCAL_EVAL_DATASET))
            if eval_dataset is not None
            else None
        ),
        lora=spec.lora,
        training=spec.training,
        output=OutputLocation(
            dir=output_dir(job),
            merge=spec.output.merge,
            base_model_name=base_model_name(job),
            s3=store_location(spec.output.s3, settings, run_uri(job)) if spec.output.s3 else None,
        ),
        metrics=MetricsEndpoint(port=settings.worker_metrics_port),
    )


def config_map(job: LoraTrainingJob, settings: Settings) -> dict[str, Any]:
    config = yaml.safe_dump(worker_input(job, settings).to_wire(), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": naming.config_map_name(job.metadata["name"]), "labels": owner_labels(job)},
        "data": {naming.CONFIG_KEY: config},
    }


def _claims(job: LoraTrainingJob) -> dict[str, bool]:
    """Every claim the pod mounts, and whether it is mounted read-only (only the output is written)."""
    spec = job.spec
    claims = {spec.output.volume.claim_name: False} if spec.output.volume is not None else {}
    eval_volume = spec.eval_dataset.volume if spec.eval_dataset is not None else None
    for volume in (spec.base_model.volume, spec.dataset.volume, eval_volume):
        if volume is not None:
            claims.setdefault(volume.claim_name, True)
    return claims


def _resources(job: LoraTrainingJob, settings: Settings) -> dict[str, Any]:
    wanted = job.spec.resources
    limits: dict[str, str] = {}
    if wanted.gpus:
        limits[wanted.gpu_resource_name or settings.gpu_resource_name] = str(wanted.gpus)
    if wanted.cpu:
        limits["cpu"] = wanted.cpu
    if wanted.memory:
        limits["memory"] = wanted.memory
    requests = {k: v for k, v in limits.items() if k in ("cpu", "memory")}
    return {"limits": limits, "requests": requests} if limits else {}


def store_env(secret: S3CredentialsSecret) -> list[dict[str, Any]]:
    """The store credentials, by reference: the values stay in the Secret (never in the Job, the
    ConfigMap or the status); the session token only when the Secret has that key."""

    def ref(variable: str, key: str, optional: bool = False) -> dict[str, Any]:
        selector: dict[str, Any] = {"name": secret.name, "key": key}
        if optional:
            selector["optional"] = True
        return {"name": variable, "valueFrom": {"secretKeyRef": selector}}

    return [
        ref(AWS_ACCESS_KEY_ID, secret.access_key_id_key),
        ref(AWS_SECRET_ACCESS_KEY, secret.secret_access_key_key),
        ref(AWS_SESSION_TOKEN, secret.session_token_key, optional=True),
    ]


def _env(job: LoraTrainingJob, settings: Settings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HF_HOME", "value": "/cache/huggingface"},
        {"name": TERMINATION_MESSAGE_PATH_ENV, "value": TERMINATION_MESSAGE_PATH},
    ]
    secret = job.spec.hf_token_secret_ref
    if secret is not None:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}
        )
    # One set of variables: the handler refuses a job whose locations name different Secrets.
    for store_secret in credentials_secrets(job, settings)[:1]:
        env.extend(store_env(store_secret))
    return env


def pod_spec(job: LoraTrainingJob, settings: Settings) -> dict[str, Any]:
    wanted = job.spec.resources
    claims = _claims(job)
    mounts = [
        {"name": "config", "mountPath": naming.CONFIG_MOUNT, "readOnly": True},
        {"name": "cache", "mountPath": "/cache"},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a pod-private emptyDir
        *(
            {"name": f"claim-{i}", "mountPath": naming.claim_mount_path(claim), "readOnly": read_only}
            for i, (claim, read_only) in enumerate(claims.items())
        ),
        *([{"name": "local", "mountPath": LOCAL_MOUNT}] if s3_locations(job) else []),
    ]
    volumes = [
        {"name": "config", "configMap": {"name": naming.config_map_name(job.metadata["name"])}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        *(
            {"name": f"claim-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
            for i, (claim, read_only) in enumerate(claims.items())
        ),
        # Object-store inputs and outputs on the node's disk; lost with the pod, which is why
        # checkpoints are uploaded as they are saved.
        *([{"name": "local", "emptyDir": {}}] if s3_locations(job) else []),
    ]
    container = {
        "name": naming.WORKER_CONTAINER,
        "image": wanted.image or settings.worker_image,
        "args": ["--config", f"{naming.CONFIG_MOUNT}/{naming.CONFIG_KEY}"],
        "env": _env(job, settings),
        "ports": [{"name": "metrics", "containerPort": settings.worker_metrics_port}],
        "resources": _resources(job, settings),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # retries are new pods, counted by the Job against backoffLimit
        # Progress goes out through /metrics and the result through the termination message: the
        # worker needs no API access, so it gets no token.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if wanted.node_selector:
        spec["nodeSelector"] = wanted.node_selector
    if wanted.tolerations:
        spec["tolerations"] = wanted.tolerations
    if wanted.affinity:
        spec["affinity"] = wanted.affinity
    if wanted.priority_class_name:
        spec["priorityClassName"] = wanted.priority_class_name
    return spec


def _rendezvous_fqdn_suffix(job: LoraTrainingJob, settings: Settings) -> str:
    service = naming.rendezvous_service_name(job.metadata["name"])
    return f".{service}.{job.metadata['namespace']}.svc.{settings.cluster_domain}"


def _node_env(job: LoraTrainingJob, settings: Settings) -> list[dict[str, Any]]:
    """What torchrun needs on each node: how many, where index 0 waits, for how long. Index 0's name
    is stable (the Job controller names an Indexed Job's pod hosts `<job>-<index>`), and resolves
    once that pod exists: the worker waits for it within the same timeout."""
    suffix = _rendezvous_fqdn_suffix(job, settings)
    host = naming.node_hostname(job.metadata["name"], 0) + suffix
    return [
        {"name": NNODES_ENV, "value": str(job.spec.resources.nodes)},
        {"name": RDZV_ENDPOINT_ENV, "value": f"{host}:{RDZV_PORT}"},
        {"name": RDZV_ID_ENV, "value": job.metadata["uid"]},
        {"name": RDZV_TIMEOUT_ENV, "value": str(settings.rendezvous_timeout_seconds)},
        {"name": POD_FQDN_ENV, "value": suffix},
    ]


def rendezvous_service(job: LoraTrainingJob) -> dict[str, Any]:
    """The headless Service that gives each pod of a multi-node run a DNS name. Not-ready addresses
    are published: the pods have no readiness probe, and the rendezvous happens before any would pass."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": naming.rendezvous_service_name(job.metadata["name"]),
            "labels": owner_labels(job),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {naming.LABEL_TRAINING_JOB_UID: job.metadata["uid"]},
            "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT}],
        },
    }


def _spread_over_nodes(job: LoraTrainingJob, settings: Settings, spec: dict[str, Any]) -> None:
    """Turn the one-pod Job into N pods that train together: Indexed (index 0 hosts the rendezvous and
    rank 0), all running at once. A pod that fails takes the others' collectives down with it, so they
    fail too and the group restarts from the newest checkpoint; each group restart may count up to N
    pod failures, hence the scaled backoffLimit."""
    nodes = job.spec.resources.nodes
    spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
    spec["backoffLimit"] = job.spec.backoff_limit * nodes
    spec["podFailurePolicy"]["rules"].insert(
        1,
        {   # The other pods never came: waiting again would wait for the same missing pod.
            "action": "FailJob",
            "onExitCodes": {
                "containerName": naming.WORKER_CONTAINER,
                "operator": "In",
                "values": [RENDEZVOUS_TIMEOUT_EXIT_CODE],
            },
        },
    )  # fmt: skip
    pod = spec["template"]["spec"]
    pod["subdomain"] = naming.rendezvous_service_name(job.metadata["name"])
    container = pod["containers"][0]
    container["env"].extend(_node_env(job, settings))
    container["ports"].append({"name": "rendezvous", "containerPort": RDZV_PORT})


def kueue_labels(job: LoraTrainingJob) -> dict[str, str]:
    labels: dict[str, str] = {}
    if job.spec.queue_name:
        labels[naming.LABEL_KUEUE_QUEUE] = job.spec.queue_name
        if job.spec.workload_priority_class_name:
            labels[naming.LABEL_KUEUE_PRIORITY] = job.spec.workload_priority_class_name
    return labels


def batch_job(job: LoraTrainingJob, settings: Settings) -> dict[str, Any]:
    labels = owner_labels(job)
    spec: dict[str, Any] = {
        "backoffLimit": job.spec.backoff_limit,
        "podFailurePolicy": {
            "rules": [
                {   # A bad dataset field or config is not retried backoffLimit times.
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": naming.WORKER_CONTAINER,
                        "operator": "In",
                        "values": [INPUT_ERROR_EXIT_CODE],
                    },
                },
                {   # Preemption, eviction, node drain: retry without spending the retry budget.
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {"metadata": {"labels": labels}, "spec": pod_spec(job, settings)},
    }  # fmt: skip
    if job.spec.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = job.spec.active_deadline_seconds
    if job.spec.resources.nodes > 1:
        _spread_over_nodes(job, settings, spec)
    if job.spec.queue_name:
        # Created suspended, as Kueue expects of a Job it did not see created: Kueue unsuspends it on
        # admission (and suspends it again to preempt). The operator never touches `suspend` after this.
        spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": naming.batch_job_name(job.metadata["name"]),
            "labels": {**labels, **kueue_labels(job)},
        },
        "spec": spec,
    }


def published_adapter(job: LoraTrainingJob) -> dict[str, Any]:
    """The LoraAdapter a successful run publishes: labelled with the job, not owned by it, so deleting
    the job keeps the adapter (and what serves it)."""
    publication = job.spec.adapter
    assert publication is not None
    name = publication.name or job.metadata["name"]
    spec: dict[str, Any] = {
        "baseModel": base_model_name(job),
        "source": {"trainingJob": {"name": job.metadata["name"]}},
        "serving": {"deployment": publication.deployment, "mode": publication.mode},
    }
    if publication.served_model_name:
        spec["servedModelName"] = publication.served_model_name
    return {
        "apiVersion": "loraplane.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {
            "name": name,
            "labels": {
                naming.LABEL_TRAINING_JOB: job.metadata["name"],
                naming.LABEL_TRAINING_JOB_UID: job.metadata["uid"],
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
            },
        },
        "spec": spec,
    }
