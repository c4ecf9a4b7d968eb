"""`make demo`'s own code path (`loraplane_devcluster.demo.run`) on the test cluster: install with Helm,
train the tiny adapter, serve it from two real vLLM replicas, and ask both models the same question;
once with the claim, once (`--storage s3`) with the object store only."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from loraplane_devcluster import demo, tinymodel
from loraplane_devcluster.objectstore import ObjectStore
from loraplane_devcluster.testing import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


@pytest.fixture
def demo_namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """The demo's namespace, emptied afterwards: two vLLM servers per demo would otherwise hold the
    node's memory for the rest of the session (adapters first, while the operator still runs)."""
    name: str = request.param
    yield name
    kube.delete_all("lad", name, timeout_s=120)
    kube.delete_all("deployments", name, timeout_s=180)
    kube.delete_namespace(name)


def assert_the_story(result: demo.DemoResult, lines: list[str]) -> None:
    """What the demo shows, whatever the storage: the trained form on every replica, none in the base
    model, a progress bar, and no restart of vLLM."""
    assert result.adapter_model == "tiny-quotes"
    assert len(result.adapter_answers) == 2, "the adapter answers on every replica"
    # The adapter answers in the one form of its training data; the random base model does not.
    assert not tinymodel.shows_quote_form(result.base_answer), result.base_answer
    for answer in result.adapter_answers.values():
        assert tinymodel.shows_quote_form(answer), f"no trained quote form in {answer!r}"
    assert any(line.startswith("what the adapter learned: ") for line in lines)
    # vLLM started once: LoRA was on from the start, the adapter loaded into the pods already serving.
    assert sorted(result.adapter_answers) == result.serving_pods
    assert any(line.lstrip().startswith("[") and "step" in line for line in lines), "a progress bar was shown"
    assert "train LoraTrainingJob tiny-quotes" in result.timings


@pytest.mark.parametrize("demo_namespace", ["demo-e2e"], indirect=True)
def test_demo_trains_serves_and_answers_through_the_adapter(kube: Kube, demo_namespace: str) -> None:
    lines: list[str] = []
    result = demo.run(kube, namespace=demo_namespace, say=lines.append)

    assert_the_story(result, lines)
    assert "install loraplane with Helm" in result.timings

    # What a user looks at afterwards: kubectl describe tells every step, kubectl wait works on both kinds.
    job = kube.kubectl("describe", "ltj", "tiny-quotes", "-n", demo_namespace).stdout
    for reason in ("JobCreated", "Running", "Succeeded", "AdapterPublished"):
        assert reason in job.split("Events:", 1)[1], f"{reason} missing from kubectl describe ltj:\n{job}"
    adapter = kube.kubectl("describe", "lad", "tiny-quotes", "-n", demo_namespace).stdout
    assert "Loaded" in adapter.split("Events:", 1)[1], f"Loaded missing from kubectl describe lad:\n{adapter}"
    assert "LoraEnabled" not in adapter, "the operator restarted vLLM to enable LoRA it already had"
    for kind, condition in (("ltj", "Succeeded"), ("lad", "Ready")):
        kube.kubectl(
            "wait",
            f"--for=condition={condition}",
            f"{kind}/tiny-quotes",
            "-n",
            demo_namespace,
            "--timeout=60s",
        )
    listing = kube.kubectl("get", "lora", "-n", demo_namespace).stdout
    assert "loratrainingjob.loraplane.io/tiny-quotes" in listing
    assert "loraadapter.loraplane.io/tiny-quotes" in listing


@pytest.mark.parametrize("demo_namespace", ["demo-s3-e2e"], indirect=True)
def test_demo_with_the_object_store_only_needs_no_claim(
    kube: Kube, demo_namespace: str, cluster_object_store: ObjectStore
) -> None:
    lines: list[str] = []
    result = demo.run(kube, demo_namespace, lines.append, demo.LOCAL_S3, cluster_object_store)

    assert_the_story(result, lines)
    claims = kube.kubectl("get", "pvc", "-n", demo_namespace, "-o", "name").stdout.split()
    assert claims == [] == result.claims, "no PersistentVolumeClaim in the demo's namespace"
    assert f"  claims in namespace {demo_namespace}: none" in lines

    job = json.loads(kube.kubectl("get", "ltj", "tiny-quotes", "-n", demo_namespace, "-o", "json").stdout)
    trained = job["status"]["adapter"]
    assert trained["uri"].startswith(f"s3://{demo.bucket_for(demo_namespace)}/runs/"), trained
    assert "claimName" not in trained
    adapter = json.loads(kube.kubectl("get", "lad", "tiny-quotes", "-n", demo_namespace, "-o", "json").stdout)
    # Both pods serve the verified copy in their own cache, named by the digest the job recorded.
    assert adapter["status"]["path"] == f"/var/lib/loraplane/adapters/.objects/{trained['sha256']}"
    assert adapter["status"]["readyReplicas"] == 2
    deployment = json.loads(
        kube.kubectl("get", "deployment", "vllm-tiny", "-n", demo_namespace, "-o", "json").stdout
    )
    assert deployment["metadata"]["generation"] == 1, "the fetcher was in the template: vLLM started once"
    described = kube.kubectl("describe", "lad", "tiny-quotes", "-n", demo_namespace).stdout
    assert "FetcherAdded" not in described
    assert "LoraEnabled" not in described
    assert any(line.startswith("where each thing lives") for line in lines)
    assert result.locations["adapter"].startswith(trained["uri"])
    said = "\n".join(lines) + json.dumps(job) + json.dumps(adapter)
    assert cluster_object_store.secret_access_key not in said
