"""Volumes with content already in them, for tests and the demo: a hostPath PersistentVolume over a
local folder, bound to a claim of the caller's choosing. (On a real cluster a user would copy the
model and data onto a volume instead.)"""

from __future__ import annotations

import shutil
from pathlib import Path

from kubernetes.client import ApiClient, CoreV1Api

from loraplane_devcluster.tinymodel import ensure_tiny_model


def stage_folder(api: ApiClient, namespace: str, claim: str, folder: Path, size: str = "5Gi") -> None:
    """Bind claim `namespace/claim` to a PersistentVolume whose files are `folder`."""
    volume = f"{namespace}-{claim}"[:63].rstrip("-")
    # The client takes plain dicts as bodies; its type hints name only its model classes.
    CoreV1Api(api).create_persistent_volume(
        {  # type: ignore[arg-type]
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume, "labels": {"loraplane.io/staged": "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(folder.resolve()), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
    )
    CoreV1Api(api).create_namespaced_persistent_volume_claim(
        namespace,
        {  # type: ignore[arg-type]
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": size}},
            },
        },
    )


def stage_tiny_model(api: ApiClient, namespace: str, claim: str, folder: Path) -> Path:
    """A claim holding `model/` (the tiny Llama) and `data/` (its datasets) in a fresh copy at `folder`,
    where training runs may also write their adapters."""
    tiny = ensure_tiny_model()
    shutil.copytree(tiny.root, folder, dirs_exist_ok=True)
    folder.chmod(0o777)  # training pods run as a non-root user on a real cluster
    stage_folder(api, namespace, claim, folder)
    return folder
