"""A LoraTrainingJob across several pods (an Indexed Job meeting through c10d at index 0's DNS name),
its adapter served by vLLM, and under Kueue (queued then admitted; preempted then resumed), on the
local cluster with real CoreDNS and a real Kueue."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_training_jobs import CLAIM, RUN_TIMEOUT_S, Jobs, tiny_job

from loraplane_devcluster import kueue
from loraplane_devcluster.staging import stage_tiny_model
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import ChartOperator, Release
from training_e2e import condition_of
from vllm_e2e import DEPLOYMENT, START_TIMEOUT_S, Cluster, completion, vllm_deployment

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

RENDEZVOUS_TIMEOUT_S = 90  # the session release's training.rendezvousTimeoutSeconds


@pytest.fixture
def volume(kube: Kube, namespace: str, tmp_path: Path) -> Path:
    return stage_tiny_model(kube.api, namespace, CLAIM, tmp_path / "volume")


@pytest.fixture
def jobs(kube: Kube, namespace: str, chart_release: Release, operator: ChartOperator) -> Jobs:
    return Jobs(kube, namespace)


def nodes_job(name: str, nodes: int, **spec: object) -> dict:
    body = tiny_job(name, **spec)
    body["spec"]["resources"]["nodes"] = nodes
    return body


def test_a_two_node_job_trains_across_two_pods_reports_world_size_2_and_vllm_serves_its_adapter(
    jobs: Jobs, kube: Kube, namespace: str, volume: Path
) -> None:
    serving = Cluster(kube, namespace, volume)
    # One vLLM replica with LoRA on from the start: it boots while the pair trains.
    serving.apply(vllm_deployment(replicas=1, lora=True))
    body = nodes_job("pair", 2, max_steps=30, save_steps=100)
    body["spec"]["adapter"] = {"name": "pair-quotes", "deployment": DEPLOYMENT, "baseModel": "tiny-llama"}
    uid = jobs.create(body)["metadata"]["uid"]
    service = wait_until("the headless Service", lambda: jobs.get("service", "pair-train"), timeout_s=30)
    assert service["spec"]["clusterIP"] == "None"
    batch = jobs.get("job", "pair-train")
    assert batch["spec"]["completionMode"] == "Indexed"
    assert batch["spec"]["parallelism"] == 2

    mid_run = jobs.wait_progress("pair", "progress from rank 0", lambda p: 0 < p["step"] < p["totalSteps"])
    assert mid_run["totalSteps"] == 30
    jobs.wait_reason("pair", "Succeeded")
    status = jobs.get("ltj", "pair")["status"]
    assert status["nodes"] == 2
    assert status["worldSize"] == 2, "reported by the worker: two processes in one world"
    assert status["distributed"].startswith("DDP (auto")
    adapter = status["adapter"]
    weights = volume / adapter["path"] / "adapter_model.safetensors"
    assert adapter["path"] == f"adapters/{uid}"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == adapter["sha256"]
    pods = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-l", "loraplane.io/training-job=pair",
                                   "-o", "json").stdout)["items"]  # fmt: skip
    assert sorted(p["spec"]["hostname"] for p in pods) == ["pair-train-0", "pair-train-1"]
    assert all(p["status"]["phase"] == "Succeeded" for p in pods)

    # The adapter the pair saved (rank 0 wrote it) is the PEFT adapter vLLM loads and answers with.
    published = wait_until("the published LoraAdapter", lambda: jobs.get("lad", "pair-quotes"), timeout_s=30)
    assert published["spec"]["source"] == {"trainingJob": {"name": "pair"}}
    served = wait_until("pair-quotes Ready on the vLLM pod", lambda: serving.ready_on("pair-quotes", 1),
                        timeout_s=START_TIMEOUT_S)  # fmt: skip
    assert served["status"]["history"][0]["sha256"] == adapter["sha256"]
    [pod] = serving.ready_pods()
    code, answer = completion(pod["status"]["podIP"], "pair-quotes")
    assert code == 200, answer
    assert answer["model"] == "pair-quotes"
    assert answer["choices"][0]["text"], answer


def test_one_pod_of_a_two_node_job_deleted_mid_run_restarts_the_group_which_resumes(
    jobs: Jobs, kube: Kube, namespace: str, volume: Path
) -> None:
    """Index 1 deleted after a checkpoint: index 0's collectives break, it fails too, and the new pair
    meets again at index 0 and resumes from the newest complete checkpoint on the shared volume."""
    created = jobs.create(nodes_job("regroup", 2, max_steps=120, save_steps=20))
    checkpoints = volume / "adapters" / created["metadata"]["uid"] / "checkpoints"
    wait_until(
        "a complete checkpoint on the volume",
        lambda: any((c / "trainer_state.json").exists() for c in checkpoints.glob("checkpoint-*")),
        timeout_s=RUN_TIMEOUT_S,
    )
    group = "loraplane.io/training-job=regroup"
    first_group = {p["metadata"]["uid"] for p in pods_of(kube, namespace, group)}
    assert len(first_group) == 2
    index_1 = f"{group},batch.kubernetes.io/job-completion-index=1"
    kube.kubectl("delete", "pods", "-n", namespace, "-l", index_1, "--wait=false")
    jobs.wait_reason("regroup", "Succeeded", timeout_s=2 * RUN_TIMEOUT_S)
    status = jobs.get("ltj", "regroup")["status"]
    assert status["resumedFromStep"] > 0, "the new group resumed from a checkpoint"
    assert status["worldSize"] == 2
    assert status["attempts"] >= 3
    pods = pods_of(kube, namespace, group)
    finished = {p["metadata"]["uid"] for p in pods if p["status"]["phase"] == "Succeeded"}
    assert len(finished) == 2
    assert not finished & first_group, "both indexes ran again: index 0 failed with its broken peer"


def pods_of(kube: Kube, namespace: str, selector: str) -> list[dict]:
    listed = kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return list(json.loads(listed)["items"])


def test_a_rendezvous_that_cannot_form_fails_with_its_reason_within_the_timeout(
    jobs: Jobs, volume: Path
) -> None:
    """One node here: pods that must not share a node leave the second unscheduled; index 0 waits the
    bounded time at the rendezvous, then the run fails as RendezvousTimeout (not retried)."""
    apart = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"loraplane.io/training-job": "lonely"}},
        "topologyKey": "kubernetes.io/hostname",
    }]}}  # fmt: skip
    body = nodes_job("lonely", 2)
    body["spec"]["resources"]["affinity"] = apart
    jobs.create(body)
    # While index 0 waits at the rendezvous, the run reads Unschedulable in the scheduler's words.
    waiting = jobs.wait_reason("lonely", "Unschedulable", timeout_s=RENDEZVOUS_TIMEOUT_S)
    assert waiting["message"].startswith("index 1 cannot be scheduled")
    failed = wait_until(
        "the Failed condition",
        lambda: (c := jobs.condition("lonely", "Failed")).get("status") == "True" and c,
        timeout_s=RENDEZVOUS_TIMEOUT_S + 120,
    )
    assert failed["reason"] == "RendezvousTimeout"
    assert "did not all join the rendezvous at lonely-train-0.lonely-train." in failed["message"]
    # The run reads the worker's own report as soon as index 0 exits; the Job controller marks the Job
    # Failed once the other pod is gone too.
    ended = wait_until(
        "the Job's Failed condition",
        lambda: next(
            (
                c
                for c in jobs.get("job", "lonely-train")["status"].get("conditions") or []
                if c["type"] == "Failed"
            ),
            None,
        ),
        timeout_s=120,
    )
    assert ended["reason"] == "PodFailurePolicy", "failed at once by the exit-69 rule, not retried"


# --- Kueue ----------------------------------------------------------------------------------------------

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"


@pytest.fixture
def one_job_queue(kube: Kube, namespace: str) -> Iterator[str]:
    """Kueue running, a ClusterQueue with quota for one tiny job (1 CPU) and a LocalQueue `queue`. A
    pending Workload of higher priority may preempt a running one (Kueue's default is `Never`); equal
    priorities wait their turn."""
    if kube.run_dir is None:
        pytest.skip("Kueue is installed into a local cluster's run directory")
    kueue.install(kube.run_dir, die_with_parent=True)
    name = f"one-job-{namespace}"[:63]
    objects: list[dict[str, Any]] = [
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResourceFlavor", "metadata": {"name": "default"}},
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {"namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
                     "resourceGroups": [{
                "coveredResources": ["cpu", "memory"],
                "flavors": [{"name": "default", "resources": [
                    {"name": "cpu", "nominalQuota": "1"}, {"name": "memory", "nominalQuota": "64Gi"},
                ]}],
            }]},
        },
    ]  # fmt: skip
    for body in objects:
        kube.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))
    local = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalQueue", "metadata": {"name": "queue"},
             "spec": {"clusterQueue": name}}  # fmt: skip
    kube.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(local))
    yield "queue"
    kueue.uninstall(kube.run_dir)


def test_the_second_job_waits_queued_in_kueues_words_until_the_first_finishes(
    jobs: Jobs, one_job_queue: str, volume: Path
) -> None:
    jobs.create(tiny_job("first", max_steps=30, save_steps=100, queueName=one_job_queue))
    first = wait_until("first's Job", lambda: jobs.get("job", "first-train"), timeout_s=30)
    assert first["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == one_job_queue
    jobs.wait_reason("first", "Running", timeout_s=RUN_TIMEOUT_S)

    jobs.create(tiny_job("second", max_steps=10, save_steps=100, queueName=one_job_queue))
    queued = jobs.wait_reason("second", "Queued", timeout_s=60)
    queued = wait_until("the Workload's own message",
                        lambda: "quota" in (c := jobs.condition("second", "Succeeded"))["message"] and c,
                        timeout_s=60)  # fmt: skip
    assert queued["status"] == "Unknown"
    assert jobs.get("job", "second-train")["spec"]["suspend"] is True

    jobs.wait_reason("first", "Succeeded")
    jobs.wait_reason("second", "Succeeded")
    second = jobs.get("job", "second-train")
    assert second["spec"]["suspend"] is False, "admitted by Kueue and left so"


@pytest.fixture
def priorities(kube: Kube) -> Iterator[dict[str, str]]:
    """Two WorkloadPriorityClasses (cluster-wide): `low` and `high`, by their names."""
    names = {"low": "loraplane-e2e-low", "high": "loraplane-e2e-high"}
    for level, value in (("low", 10), ("high", 1000)):
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WorkloadPriorityClass",
                "metadata": {"name": names[level]}, "value": value}  # fmt: skip
        kube.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(body))
    yield names
    kube.kubectl("delete", "workloadpriorityclasses", *names.values(), "--ignore-not-found")


def test_a_higher_priority_job_preempts_a_running_one_which_then_resumes_from_its_checkpoint(
    jobs: Jobs, one_job_queue: str, priorities: dict[str, str], volume: Path
) -> None:
    """Kueue evicts the low-priority run to admit the high one (quota for one): the low run reads
    Preempted in the Workload's words, the high one trains and finishes, then Kueue admits the low run
    again and it resumes from its newest complete checkpoint on the volume."""
    low = jobs.create(tiny_job("low", max_steps=120, save_steps=20, queueName=one_job_queue,
                               workloadPriorityClassName=priorities["low"]))  # fmt: skip
    checkpoints = volume / "adapters" / low["metadata"]["uid"] / "checkpoints"
    jobs.wait(
        "low",
        "a complete checkpoint on the volume",
        lambda _: any((c / "trainer_state.json").exists() for c in checkpoints.glob("checkpoint-*")),
    )
    labels = jobs.get("job", "low-train")["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/priority-class"] == priorities["low"]

    jobs.create(tiny_job("high", max_steps=10, save_steps=100, queueName=one_job_queue,
                         workloadPriorityClassName=priorities["high"]))  # fmt: skip
    preempted = jobs.wait(
        "low",
        "Preempted in the Workload's words",
        lambda job: (
            (c := condition_of(job, "Succeeded")).get("reason") == "Preempted"
            and "due to prioritization in the ClusterQueue" in c["message"]
            and c
        ),
        timeout_s=120,
    )
    high = wait_until("high's Job", lambda: jobs.get("job", "high-train"), timeout_s=30)
    high_uid = high["metadata"]["uid"]
    assert f"JobUID: {high_uid}" in preempted["message"], "Kueue names the preemptor"
    assert preempted["status"] == "Unknown", "not a failure: the run waits to be admitted again"

    jobs.wait_reason("high", "Running", timeout_s=RUN_TIMEOUT_S)
    assert jobs.get("job", "low-train")["spec"]["suspend"] is True, "quota for one: low waits meanwhile"
    assert jobs.condition("low", "Succeeded")["reason"] == "Preempted"
    jobs.wait_reason("high", "Succeeded")

    jobs.wait_reason("low", "Succeeded", timeout_s=2 * RUN_TIMEOUT_S)
    status = jobs.get("ltj", "low")["status"]
    assert status["resumedFromStep"] > 0, "the readmitted run resumed from a checkpoint"
    assert status["resumedFromStep"] % 20 == 0, "a saved step (saveSteps 20)"
    assert status["progress"]["step"] == 120
    assert jobs.get("job", "low-train")["spec"]["suspend"] is False, "readmitted by Kueue and left so"
