"""Adapter versions end to end (issue 16): real TRL runs publish v1, v2 and v3 of one LoraAdapter into a
real 2-replica vLLM Deployment; the promotion policy lets the better v2 in (swapped pod by pod) and
refuses the worse v3; pointing the adapter back at v1 rolls back the same way; status.history shows
v1, v2, v1. The effect check fires on an adapter of all-zero B matrices and not on a trained one.

One vLLM Deployment (started with LoRA already on, so it starts once) serves the whole module; the
tests run in file order. Waits are on observed state, never sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from loraplane_devcluster.testing import wait_until
from loraplane_devcluster.tinymodel import ensure_tiny_model
from training_e2e import Jobs, condition_of, tiny_job
from vllm_e2e import (
    DEPLOYMENT,
    START_TIMEOUT_S,
    Cluster,
    adapter,
    completion,
    module_cluster,
    vllm_deployment,
)

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

ADAPTER = "quotes"
NO_EFFECT = "AdapterHasNoEffect"


cluster = module_cluster("versions")


def version(name: str, learning_rate: float, steps: int, promotion: dict[str, Any] | None = None) -> dict:
    """A run on the quotes with 10% held out (the same eval data for every version), publishing into
    the one LoraAdapter with `replace`."""
    body = tiny_job(name, max_steps=steps, save_steps=1000)
    body["spec"]["training"]["learningRate"] = learning_rate
    body["spec"]["dataset"]["evalFraction"] = 0.1
    body["spec"]["adapter"] = {
        "name": ADAPTER,
        "deployment": DEPLOYMENT,
        "baseModel": "tiny-llama",
        "replace": True,
    }
    if promotion:
        body["spec"]["adapter"]["promotion"] = promotion
    return body


def serving(cluster: Cluster, job: str) -> dict[str, Any] | None:
    """The adapter once both pods hold the version of `job` (its newest history entry)."""
    found = cluster.ready_on(ADAPTER, 2)
    history = (found or {}).get("status", {}).get("history") or []
    return found if history and history[0].get("trainingJob") == job else None


def effect(cluster: Cluster, name: str) -> dict[str, Any] | None:
    conditions = (cluster.get("lad", name) or {}).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == NO_EFFECT), None)


def event_messages(cluster: Cluster, name: str, reason: str) -> list[str]:
    out = cluster.kube.kubectl("get", "events", "-n", cluster.namespace, "--field-selector",
                               f"involvedObject.name={name},reason={reason}", "-o", "json")  # fmt: skip
    return [e["message"] for e in json.loads(out.stdout)["items"]]


class ReadyPods:
    """Counts the Deployment's Ready pods while a swap runs: a one-pod-at-a-time swap never drops to 0."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster, self.seen, self.stop = cluster, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.seen.append(len(self.cluster.ready_pods()))
            self.stop.wait(1.0)

    def __enter__(self) -> ReadyPods:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def test_a_better_version_swaps_in_a_worse_one_is_refused_and_a_rollback_swaps_back(cluster: Cluster) -> None:
    jobs = Jobs(cluster.kube, cluster.namespace)
    cluster.apply(vllm_deployment(lora=True))
    jobs.create(version("v1", 1e-3, 20))
    v1 = wait_until("v1 served on 2 pods", lambda: serving(cluster, "v1"), timeout_s=2 * START_TIMEOUT_S)
    trained = {name: jobs.get("ltj", name)["status"] for name in ("v1",)}
    [entry] = v1["status"]["history"]
    assert entry["path"] == f"/models/{trained['v1']['adapter']['path']}"
    assert entry["sha256"] == trained["v1"]["adapter"]["sha256"]
    assert entry["evaluation"] == trained["v1"]["evaluation"]
    assert "servingUntil" not in entry

    # v2: more steps at a higher rate, judged against the served v1 on the same eval data.
    jobs.create(version("v2", 5e-3, 30, {"notWorseThanServing": True}))
    promoted = jobs.wait("v2", "the Promoted condition", lambda job: condition_of(job, "Promoted"))
    assert (promoted["status"], promoted["reason"]) == ("True", "Promoted"), promoted
    # v3: a learning rate too small to learn anything: worse than the v2 the adapter now names.
    jobs.create(version("v3", 1e-6, 20, {"notWorseThanServing": True}))
    with ReadyPods(cluster) as during_swap:
        wait_until("v2 served on 2 pods", lambda: serving(cluster, "v2"), timeout_s=START_TIMEOUT_S)
    assert min(during_swap.seen) >= 1, during_swap.seen
    trained.update({name: jobs.get("ltj", name)["status"] for name in ("v2",)})
    old = f"/models/{trained['v1']['adapter']['path']}"
    replacing = [m for m in event_messages(cluster, ADAPTER, "Loaded") if f"(replacing {old})" in m]
    assert len(replacing) == 2, replacing  # one swap per pod
    assert trained["v2"]["evaluation"]["loss"] < trained["v1"]["evaluation"]["loss"]

    refused = jobs.wait("v3", "the Promoted condition", lambda job: condition_of(job, "Promoted"))
    assert (refused["status"], refused["reason"]) == ("False", "NotBetterThanServing"), refused
    assert "(job v2)" in refused["message"]
    assert jobs.condition("v3", "Succeeded")["status"] == "True"
    assert cluster.get("lad", ADAPTER)["spec"]["source"] == {"trainingJob": {"name": "v2"}}
    assert serving(cluster, "v2"), "v2 keeps serving"

    # Roll back: the two commands of the README.
    cluster.kube.kubectl("patch", "lad", ADAPTER, "-n", cluster.namespace, "--type", "merge",
                         "-p", '{"spec":{"source":{"trainingJob":{"name":"v1"}}}}')  # fmt: skip
    with ReadyPods(cluster) as during_rollback:
        waited = cluster.kube.kubectl(
            "wait", f"lad/{ADAPTER}", "-n", cluster.namespace,
            "--for=jsonpath={.status.history[0].trainingJob}=v1", f"--timeout={START_TIMEOUT_S}s",
            timeout_s=START_TIMEOUT_S + 30,
        )  # fmt: skip
    assert "condition met" in waited.stdout
    assert min(during_rollback.seen) >= 1, during_rollback.seen
    rolled_back = wait_until("v1 Ready on 2 pods again", lambda: serving(cluster, "v1"), timeout_s=60)
    history = rolled_back["status"]["history"]
    assert [e["trainingJob"] for e in reversed(history)] == ["v1", "v2", "v1"]
    assert history[0]["path"] == history[2]["path"] == old
    assert history[1]["evaluation"] == trained["v2"]["evaluation"]
    # Each version stopped serving when the next one started.
    assert history[2]["servingUntil"] == history[1]["servingSince"]
    assert history[1]["servingUntil"] == history[0]["servingSince"]
    for pod in cluster.ready_pods():
        assert completion(pod["status"]["podIP"], ADAPTER)[0] == 200

    table = cluster.kube.kubectl("get", "lad", ADAPTER, "-n", cluster.namespace).stdout
    header, row = table.splitlines()[:2]
    assert "VERSION" in header
    assert row.split()[header.split().index("VERSION")] == "v1"

    # The trained adapter changes the answer: the effect check says so, with no Warning.
    checked = wait_until("the effect check of v1", lambda: effect(cluster, ADAPTER), timeout_s=120)
    losses = {name: jobs.get("ltj", name)["status"]["evaluation"]["loss"] for name in ("v1", "v2", "v3")}
    print(f"eval loss by version: {losses}; effect check of v1: {checked['message']}")
    assert (checked["status"], checked["reason"]) in {
        ("False", "ChangesOutput"),
        ("False", "ChangesLogprobs"),
    }
    assert NO_EFFECT not in cluster.events(ADAPTER)


ZERO_B = """
import sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
b = [v for k, v in peft_model.state_dict().items() if "lora_B" in k]
assert b, "no lora_B weights"
assert all(torch.count_nonzero(v) == 0 for v in b), "PEFT's init is expected to leave B at zero"
peft_model.save_pretrained(sys.argv[2])
"""


def zero_b_adapter(target: Path) -> None:
    """A LoRA adapter for the tiny Llama as PEFT initialises it, untrained: B = 0, so it changes
    nothing. (PEFT refuses to save one whose target modules the model lacks, the other way such an
    adapter arises: NoMatchingPeftModuleError.) In a process of its own, like the session's adapter."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-c", ZERO_B, str(ensure_tiny_model().model_dir), str(target)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_an_adapter_that_changes_nothing_is_caught_and_keeps_serving(cluster: Cluster) -> None:
    zero_b_adapter(cluster.volume / "adapters" / "zero-b")
    cluster.apply(adapter("zero-b", "adapters/zero-b", probePrompt="A quote about patience:"))
    found = wait_until(
        "the effect check of zero-b", lambda: effect(cluster, "zero-b"), timeout_s=START_TIMEOUT_S
    )
    assert (found["status"], found["reason"]) == ("True", "NoEffect"), found
    assert "'A quote about patience:'" in found["message"]
    assert cluster.adapter_ready("zero-b"), "it keeps serving"
    assert NO_EFFECT in cluster.events("zero-b")
    status = cluster.get("lad", "zero-b")["status"]
    assert status["effectCheck"]["path"] == "/models/adapters/zero-b"
    assert [e["path"] for e in status["history"]] == ["/models/adapters/zero-b"]
    # The trained adapter beside it was not judged the same way.
    assert effect(cluster, ADAPTER)["status"] == "False"
    cluster.delete("lad", "zero-b")
