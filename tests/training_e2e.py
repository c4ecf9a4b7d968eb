"""LoraTrainingJobs as the end-to-end tests drive them: a tiny CPU job made from the example, and
kubectl on the jobs of one namespace (waits on observed status, a failed run fails the wait at once)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml

from loraplane_devcluster.testing import Kube, wait_until
from manifests import EXAMPLES

RUN_TIMEOUT_S = 420


def tiny_job(name: str, *, max_steps: int = 60, save_steps: int = 20, **spec: object) -> dict:
    body = yaml.safe_load((EXAMPLES / "tiny-cpu" / "training-job.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"]["training"].update(maxSteps=max_steps, saveSteps=save_steps, loggingSteps=1)
    body["spec"].pop("adapter", None)
    body["spec"].update(spec)
    return body


def condition_of(job: dict, type_: str) -> dict:
    return next((c for c in job.get("status", {}).get("conditions", []) if c["type"] == type_), {})


class Jobs:
    """kubectl on LoraTrainingJobs of one namespace."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace

    def create(self, body: dict) -> dict:
        out = self.kube.kubectl(
            "create", "-n", self.namespace, "-f", "-", "-o", "json", input=yaml.safe_dump(body)
        )
        return json.loads(out.stdout)

    def get(self, kind: str, name: str) -> dict | None:
        found = self.kube.kubectl("get", kind, name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else None

    def condition(self, name: str, type_: str) -> dict:
        return condition_of(self.get("ltj", name) or {}, type_)

    def wait(
        self, name: str, what: str, seen: Callable[[dict], Any], timeout_s: float = RUN_TIMEOUT_S
    ) -> Any:
        """Wait until `seen(job)` is truthy; a run that fails meanwhile fails the test at once."""

        def probe() -> Any:
            job = self.get("ltj", name) or {}
            result = seen(job)
            failed = condition_of(job, "Failed")
            if not result and failed.get("status") == "True":
                raise AssertionError(f"{name} failed while waiting for {what}: {failed}")
            return result

        return wait_until(f"{name}: {what}", probe, timeout_s=timeout_s, interval_s=0.5)

    def wait_reason(self, name: str, reason: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
        def reached(job: dict) -> dict | None:
            summary = condition_of(job, "Succeeded")
            return summary if summary.get("reason") == reason else None

        return self.wait(name, f"reason {reason}", reached, timeout_s)

    def wait_progress(self, name: str, what: str, seen: Callable[[dict], bool]) -> dict:
        def progress(job: dict) -> dict | None:
            current = job.get("status", {}).get("progress") or {}
            return current if current and seen(current) else None

        return self.wait(name, what, progress)

    def events(self, name: str) -> list[str]:
        out = self.kube.kubectl(
            "get",
            "events",
            "-n",
            self.namespace,
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "json",
        )
        return [e["reason"] for e in json.loads(out.stdout)["items"]]

    def children(self, name: str) -> dict[str, list[str]]:
        selector = f"loraplane.io/training-job={name}"
        found = {}
        for kind in ("jobs", "pods", "configmaps"):
            out = self.kube.kubectl("get", kind, "-n", self.namespace, "-l", selector, "-o", "name")
            found[kind] = out.stdout.split()
        return found
