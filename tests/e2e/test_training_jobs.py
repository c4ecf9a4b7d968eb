"""LoraTrainingJob end to end: the operator (under the chart's ServiceAccount) runs the real worker in a
pod of the local cluster's node agent, on the tiny model; tests wait on observed status, never sleeps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from loraplane_devcluster.staging import stage_tiny_model
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import ChartOperator, Release
from training_e2e import RUN_TIMEOUT_S, Jobs, condition_of, tiny_job

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

CLAIM = "loraplane-tiny"


@pytest.fixture
def volume(kube: Kube, namespace: str, tmp_path: Path) -> Path:
    return stage_tiny_model(kube.api, namespace, CLAIM, tmp_path / "volume")


@pytest.fixture
def jobs(kube: Kube, namespace: str, chart_release: Release, operator: ChartOperator) -> Jobs:
    return Jobs(kube, namespace)


def test_a_tiny_job_trains_reports_progress_and_publishes_its_adapter(
    jobs: Jobs, kube: Kube, namespace: str, volume: Path
) -> None:
    body = tiny_job("tiny", max_steps=80, save_steps=40)
    body["spec"]["adapter"] = {"name": "tiny-quotes", "deployment": "vllm-tiny"}
    created = jobs.create(body)
    uid = created["metadata"]["uid"]
    wait_until("the training Job", lambda: jobs.get("job", "tiny-train"), timeout_s=30)

    mid_run = jobs.wait_progress("tiny", "progress mid-run", lambda p: 0 < p["step"] < p["totalSteps"])
    assert mid_run["totalSteps"] == 80
    assert mid_run["loss"] > 0

    waited = kube.kubectl(
        "wait", "--for=condition=Succeeded", "ltj/tiny", "-n", namespace, f"--timeout={RUN_TIMEOUT_S}s",
        timeout_s=RUN_TIMEOUT_S + 30,
    )  # fmt: skip
    assert "condition met" in waited.stdout
    status = jobs.get("ltj", "tiny")["status"]
    adapter = status["adapter"]
    assert adapter["claimName"] == CLAIM
    assert adapter["path"] == f"adapters/{uid}"
    weights = volume / adapter["path"] / "adapter_model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == adapter["sha256"]
    assert adapter["r"] == 8
    assert status["progress"]["percent"] == 100
    assert status["trainableParameters"].startswith("trainable params:")

    published = wait_until("the published LoraAdapter", lambda: jobs.get("lad", "tiny-quotes"), timeout_s=30)
    assert published["metadata"]["labels"]["loraplane.io/training-job"] == "tiny"
    assert "ownerReferences" not in published["metadata"]
    assert published["spec"]["source"] == {"trainingJob": {"name": "tiny"}}
    events = jobs.events("tiny")
    for reason in ("JobCreated", "Succeeded", "AdapterPublished"):
        assert reason in events, events

    # Deleting the job removes what it owned, never the adapter files or the published LoraAdapter.
    kube.kubectl("delete", "ltj", "tiny", "-n", namespace)
    wait_until("Job, pods and ConfigMap to be collected",
               lambda: not any(jobs.children("tiny").values()), timeout_s=60)  # fmt: skip
    assert weights.exists()
    assert jobs.get("lad", "tiny-quotes") is not None


def test_a_bad_dataset_field_fails_at_once_with_the_workers_message(jobs: Jobs, volume: Path) -> None:
    body = tiny_job("bad-field")
    body["spec"]["dataset"]["textField"] = "no_such_column"
    jobs.create(body)
    failed = wait_until(
        "the Failed condition",
        lambda: (c := jobs.condition("bad-field", "Failed")).get("status") == "True" and c,
        timeout_s=RUN_TIMEOUT_S,
    )
    assert failed["reason"] == "InputError"
    assert "no_such_column" in failed["message"]
    assert "InputError" in jobs.events("bad-field")
    batch = jobs.get("job", "bad-field-train")
    assert batch["status"].get("failed") == 1, "an input error must not be retried"


def test_a_dataset_of_empty_texts_fails_as_an_input_error_and_publishes_nothing(
    jobs: Jobs, volume: Path
) -> None:
    """50 rows of `{"text": ""}` used to train, succeed and publish: now the worker refuses them,
    naming the column and what it found, and no LoraAdapter appears."""
    (volume / "data" / "blank.jsonl").write_text('{"text": ""}\n' * 50)
    body = tiny_job("blank")
    body["spec"]["dataset"]["volume"]["path"] = "data/blank.jsonl"
    body["spec"]["adapter"] = {"name": "blank-quotes", "deployment": "vllm-tiny"}
    uid = jobs.create(body)["metadata"]["uid"]
    failed = wait_until(
        "the Failed condition",
        lambda: (c := jobs.condition("blank", "Failed")).get("status") == "True" and c,
        timeout_s=RUN_TIMEOUT_S,
    )
    assert failed["reason"] == "InputError"
    assert "EmptyDatasetError" in failed["message"]
    assert "column 'text'" in failed["message"]
    assert "only empty strings (50 rows" in failed["message"]
    assert jobs.get("job", "blank-train")["status"].get("failed") == 1, "an input error is not retried"
    assert jobs.get("ltj", "blank")["status"].get("adapter") is None
    assert jobs.get("lad", "blank-quotes") is None
    assert not (volume / "adapters" / uid / "adapter_config.json").exists()
    assert "InputError" in jobs.events("blank")


def test_a_missing_token_secret_waits_in_the_kubelets_words_and_runs_once_created(
    jobs: Jobs, kube: Kube, namespace: str, volume: Path
) -> None:
    """The kubelet holds the container in CreateContainerConfigError; the condition says so (not
    "Pending" forever), with a Warning, and stays retryable: create the Secret and the job trains."""
    jobs.create(tiny_job("token", max_steps=4, save_steps=100, hfTokenSecretRef={"name": "hf-token"}))
    waiting = jobs.wait_reason("token", "CreateContainerConfigError", timeout_s=120)
    assert 'secret "hf-token" not found' in waiting["message"]
    assert "create or fix the Secret" in waiting["message"]
    assert waiting["status"] == "Unknown", "not terminal: fixing the cause lets the run go on"
    assert "CreateContainerConfigError" in jobs.events("token")

    secret_value = "hf_not_a_real_token_0123456789"
    kube.kubectl(
        "create", "secret", "generic", "hf-token", "-n", namespace, f"--from-literal=token={secret_value}"
    )
    waited = kube.kubectl(
        "wait", "--for=condition=Succeeded", "ltj/token", "-n", namespace, f"--timeout={RUN_TIMEOUT_S}s",
        timeout_s=RUN_TIMEOUT_S + 30,
    )  # fmt: skip
    assert "condition met" in waited.stdout
    finished = jobs.get("ltj", "token")
    assert finished["status"]["adapter"]["sha256"]
    assert secret_value not in json.dumps(finished), "the token never reaches the status"


def test_more_gpus_than_any_node_has_waits_with_the_schedulers_reason(jobs: Jobs, volume: Path) -> None:
    jobs.create(tiny_job("greedy", resources={"gpus": 64}))
    waiting = jobs.wait_reason("greedy", "Unschedulable", timeout_s=60)
    assert "nvidia.com/gpu" in waiting["message"]


def test_an_invalid_pass_through_field_is_refused_by_the_operator(jobs: Jobs, volume: Path) -> None:
    body = tiny_job("typo")
    body["spec"]["training"]["sftArgs"] = {"weightdecay": 0.1}
    jobs.create(body)
    refused = jobs.wait_reason("typo", "InvalidSpec", timeout_s=60)
    assert "spec.training.sftArgs.weightdecay" in refused["message"]
    assert "did you mean weight_decay?" in refused["message"]
    assert jobs.get("job", "typo-train") is None
    assert "InvalidSpec" in jobs.events("typo")


def test_an_operator_restart_mid_run_makes_no_second_job(
    jobs: Jobs, operator: ChartOperator, namespace: str, kube: Kube, volume: Path
) -> None:
    jobs.create(tiny_job("restart", max_steps=80))
    jobs.wait_progress("restart", "training to start", lambda p: p["step"] > 0)
    operator.kill()
    jobs.wait_reason("restart", "Succeeded")
    assert len(jobs.children("restart")["jobs"]) == 1


def test_a_deleted_training_pod_is_retried_and_resumes_from_its_checkpoint(
    jobs: Jobs, kube: Kube, namespace: str, volume: Path
) -> None:
    created = jobs.create(tiny_job("resume", max_steps=120, save_steps=20))
    checkpoints = volume / "adapters" / created["metadata"]["uid"] / "checkpoints"
    wait_until(
        "a complete checkpoint on the volume",
        lambda: any((c / "trainer_state.json").exists() for c in checkpoints.glob("checkpoint-*")),
        timeout_s=RUN_TIMEOUT_S,
    )
    kube.kubectl("delete", "pods", "-n", namespace, "-l", "loraplane.io/training-job=resume", "--wait=false")
    jobs.wait_reason("resume", "Succeeded")
    status = jobs.get("ltj", "resume")["status"]
    assert status["resumedFromStep"] > 0
    assert status["attempts"] >= 2


def test_held_out_data_records_base_and_adapter_eval_loss_and_a_met_policy_publishes(
    jobs: Jobs, kube: Kube, namespace: str, volume: Path
) -> None:
    # Eval data of its own (evalDataset), beside the training file in the same claim: 20 quotes the
    # run does not train on, read with the training data's column.
    quotes = (volume / "data" / "quotes.jsonl").read_text().splitlines(keepends=True)
    (volume / "data" / "train.jsonl").write_text("".join(quotes[:180]))
    (volume / "data" / "held-out.jsonl").write_text("".join(quotes[180:]))
    body = tiny_job("evaluated", max_steps=20, save_steps=100)
    body["spec"]["dataset"]["volume"]["path"] = "data/train.jsonl"
    body["spec"]["evalDataset"] = {"volume": {"claimName": CLAIM, "path": "data/held-out.jsonl"}}
    body["spec"]["adapter"] = {
        "name": "evaluated-quotes",
        "deployment": "vllm-tiny",
        "promotion": {"minRelativeImprovement": 0.01, "maxEvalLoss": 100},
    }
    jobs.create(body)
    promoted = jobs.wait("evaluated", "the Promoted condition", lambda job: condition_of(job, "Promoted"))
    status = jobs.get("ltj", "evaluated")["status"]
    evaluation = status["evaluation"]
    assert evaluation["examples"] == 20  # the held-out file's quotes
    pod = jobs.get("job", "evaluated-train")["spec"]["template"]["spec"]  # type: ignore[index]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [CLAIM], "one claim holds the model, both data files and the output: mounted once"
    assert evaluation["digest"].startswith("sha256:")
    assert evaluation["loss"] < evaluation["baseLoss"], evaluation
    assert evaluation["change"].startswith("-")
    assert evaluation["change"].endswith("%")
    assert evaluation["perplexity"] < evaluation["basePerplexity"]
    assert 0 <= evaluation["meanTokenAccuracy"] <= 1
    assert status["evalLoss"] == evaluation["loss"]
    assert promoted["status"] == "True", promoted
    assert promoted["reason"] == "Promoted"
    assert "at least 1% below the base" in promoted["message"]
    published = wait_until("the LoraAdapter", lambda: jobs.get("lad", "evaluated-quotes"), timeout_s=30)
    assert published["spec"]["source"] == {"trainingJob": {"name": "evaluated"}}

    table = kube.kubectl("get", "ltj", "evaluated", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert "EVAL LOSS" in header
    assert "VS BASE" in header
    assert evaluation["change"] in row


def test_a_policy_that_cannot_be_met_succeeds_without_publishing(
    jobs: Jobs, kube: Kube, namespace: str, volume: Path
) -> None:
    body = tiny_job("unpromoted", max_steps=4, save_steps=100)
    body["spec"]["dataset"]["evalFraction"] = 0.1
    body["spec"]["adapter"] = {
        "name": "unpromoted-quotes",
        "deployment": "vllm-tiny",
        "promotion": {"maxEvalLoss": 0.001},
    }
    created = jobs.create(body)
    refused = jobs.wait("unpromoted", "the Promoted condition", lambda job: condition_of(job, "Promoted"))
    assert refused["status"] == "False"
    assert refused["reason"] == "EvalLossTooHigh"
    loss = jobs.get("ltj", "unpromoted")["status"]["evaluation"]["loss"]
    assert f"eval loss {loss:.4g}" in refused["message"]
    assert "maxEvalLoss 0.001" in refused["message"]
    assert jobs.condition("unpromoted", "Succeeded")["status"] == "True"
    assert "EvalLossTooHigh" in jobs.events("unpromoted")
    assert jobs.get("lad", "unpromoted-quotes") is None
    adapter = volume / "adapters" / created["metadata"]["uid"] / "adapter_model.safetensors"
    assert adapter.is_file(), "the adapter stays in storage"


def test_a_version_worse_than_the_served_one_on_the_same_data_is_refused(jobs: Jobs, volume: Path) -> None:
    def version(name: str, learning_rate: float, promotion: dict | None) -> dict:
        body = tiny_job(name, max_steps=20, save_steps=100)
        body["spec"]["training"]["learningRate"] = learning_rate
        body["spec"]["dataset"]["evalFraction"] = 0.1
        body["spec"]["adapter"] = {"name": "served-quotes", "deployment": "vllm-tiny", "replace": True}
        if promotion:
            body["spec"]["adapter"]["promotion"] = promotion
        return body

    jobs.create(version("v1", 3e-3, None))
    wait_until("v1 published", lambda: jobs.get("lad", "served-quotes"), timeout_s=RUN_TIMEOUT_S)
    jobs.create(version("v2", 1e-6, {"notWorseThanServing": True}))
    refused = jobs.wait("v2", "the Promoted condition", lambda job: condition_of(job, "Promoted"))
    served, worse = (jobs.get("ltj", name)["status"]["evaluation"] for name in ("v1", "v2"))
    assert served["digest"] == worse["digest"], "same files, fraction and seed: the same eval data"
    assert worse["loss"] > served["loss"]
    assert (refused["status"], refused["reason"]) == ("False", "NotBetterThanServing")
    assert f"above the served version's {served['loss']:.4g} (job v1)" in refused["message"]
    assert jobs.get("lad", "served-quotes")["spec"]["source"] == {"trainingJob": {"name": "v1"}}
    assert "NotBetterThanServing" in jobs.events("v2")
