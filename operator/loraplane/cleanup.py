"""`python -m loraplane.cleanup`: undo what loraplane added to serving, so that uninstalling it leaves
every vLLM Deployment serving (the chart runs this as a pre-delete hook Job).

In order: stop the operator and wait until its pods are gone (it would add its settings back), open
every pod's readiness gate (pods keep the gate in their spec until the rollout replaces them, and
nobody else would open it), restore the Deployments' pod templates (loraplane's flags, runtime
variable, gate and Static entries out; the user's own values back), open the gates of pods made from
the old template meanwhile, and remove loraplane's finalizer from its objects (nothing would remove it
after the operator is gone, and the objects could never be deleted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import logging
import time
from collections.abc import Sequence
from typing import Any

from loraplane import GROUP, kube
from loraplane.builders import serving
from loraplane.kube import ApiException

FINALIZER = f"{GROUP}/cleanup"
PLURALS = ("loraadapters", "loratrainingjobs")
log = logging.getLogger("loraplane.cleanup")


def stop_operator(namespace: str, name: str, timeout_s: float) -> None:
    """Scale the operator's Deployment to zero and wait until its pods are gone: the Deployment's
    status stops counting a pod as soon as it is terminating, while kopf still acts until it exits."""
    deployment = kube.scale_deployment(namespace, name, 0)
    if deployment is None:
        return
    labels = deployment.get("spec", {}).get("selector", {}).get("matchLabels") or {}
    selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pods = kube.list_pods(namespace, selector)
        if not [pod for pod in pods if not _owned_by_job(pod)]:
            return
        time.sleep(1)
    log.warning("the operator's pods did not stop within %ss; cleaning up anyway", timeout_s)


def _owned_by_job(pod: dict[str, Any]) -> bool:
    """A Job's pod (this cleanup's own, from charts whose hook pod carried the operator's labels)."""
    return any(owner.get("kind") == "Job" for owner in pod["metadata"].get("ownerReferences") or [])


def open_gates(namespaces: Sequence[str]) -> int:
    opened = 0
    for namespace in namespaces:
        for pod in kube.list_pods(namespace):
            gates = [g.get("conditionType") for g in pod.get("spec", {}).get("readinessGates") or []]
            if serving.GATE not in gates:
                continue
            conditions = (pod.get("status") or {}).get("conditions") or []
            if any(c.get("type") == serving.GATE and c.get("status") == "True" for c in conditions):
                continue  # open already
            condition = {
                "type": serving.GATE,
                "status": "True",
                "reason": "LoraplaneRemoved",
                "message": "loraplane was uninstalled; the gate no longer waits for adapters",
                "lastTransitionTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            try:
                kube.set_pod_condition(namespace, pod["metadata"]["name"], condition)
            except ApiException as error:
                if error.status == 404:
                    continue  # gone since the listing: nothing left to open
                raise
            opened += 1
    return opened


def restore_deployments(namespaces: Sequence[str]) -> int:
    restored = 0
    for namespace in namespaces:
        for item in kube.list_deployments(namespace):
            for _ in range(5):  # read-modify-write: a conflict means someone wrote in between
                deployment = kube.read_deployment(namespace, item["metadata"]["name"])
                if deployment is None:
                    break  # deleted since the listing
                patch = serving.cleanup_patch(deployment)
                if patch is None:
                    break
                try:
                    kube.replace_deployment(namespace, serving.merged(deployment, patch))
                except ApiException as error:
                    if error.status == 409:
                        continue
                    raise
                restored += 1
                break
    return restored


def remove_finalizers(namespaces: Sequence[str]) -> int:
    removed = 0
    for namespace in namespaces:
        for plural in PLURALS:
            items = kube.list_custom_objects(namespace, plural)
            for item in items or []:  # None: the CRD is gone already
                removed += _remove_finalizer(namespace, plural, item)
    return removed


def _remove_finalizer(namespace: str, plural: str, item: dict[str, Any]) -> int:
    """Remove loraplane's finalizer from one object: 1 if it was there. The patch carries the
    resourceVersion it was computed from, so a write in between (a 409) means: read again."""
    name = item["metadata"]["name"]
    for _ in range(5):
        finalizers = item["metadata"].get("finalizers") or []
        if FINALIZER not in finalizers:
            return 0
        kept = [f for f in finalizers if f != FINALIZER]
        patch = {"metadata": {"finalizers": kept, "resourceVersion": item["metadata"]["resourceVersion"]}}
        try:
            return 1 if kube.patch_custom_object(namespace, plural, name, patch) else 0
        except ApiException as error:
            if error.status != 409:
                raise
        found = kube.get_custom_object(namespace, plural, name)
        if found is None:
            return 0
        item = found
    raise RuntimeError(f"{plural} {namespace}/{name} kept changing; its finalizer is still there")


def namespaces_of(wanted: Sequence[str], excluded: Sequence[str] = ()) -> list[str]:
    """The namespaces to clean: the watched ones, else every namespace but the excluded globs."""
    if wanted:
        return list(wanted)
    names = kube.namespace_names()
    return [name for name in names if not any(fnmatch.fnmatchcase(name, glob) for glob in excluded)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraplane.cleanup", description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", action="append", default=[], help="a watched namespace (default: all)")
    parser.add_argument(
        "--exclude-namespace",
        action="append",
        default=[],
        help="a namespace glob to leave alone when no --namespace is given (another release serves it)",
    )
    parser.add_argument("--operator-namespace", help="namespace of the operator Deployment to stop first")
    parser.add_argument("--operator-deployment", help="name of the operator Deployment to stop first")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the operator to stop"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.operator_namespace and args.operator_deployment:
        stop_operator(args.operator_namespace, args.operator_deployment, args.timeout)
    namespaces = namespaces_of(args.namespace, args.exclude_namespace)
    opened = open_gates(namespaces)
    restored = restore_deployments(namespaces)
    # Pods made from an old template between the first sweep and the restore (a rollout under way).
    opened += open_gates(namespaces)
    removed = remove_finalizers(namespaces)
    log.info(
        "opened %d readiness gates, restored %d Deployments, removed %d finalizers", opened, restored, removed
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
