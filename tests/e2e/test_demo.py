"""`make demo`'s own code path (`loraplane_devcluster.demo.run`) on the test cluster: install with Helm,
train the tiny adapter, serve it from two real vLLM replicas, and ask both models the same question."""

from __future__ import annotations

import pytest

from loraplane_devcluster import demo, tinymodel
from loraplane_devcluster.testing import Kube

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def test_demo_trains_serves_and_answers_through_the_adapter(kube: Kube) -> None:
    lines: list[str] = []
    result = demo.run(kube, namespace="demo-e2e", say=lines.append)

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
    assert set(result.timings) >= {"install loraplane with Helm", "train LoraTrainingJob tiny-quotes"}

    # What a user looks at afterwards: kubectl describe tells every step, kubectl wait works on both kinds.
    job = kube.kubectl("describe", "ltj", "tiny-quotes", "-n", "demo-e2e").stdout
    for reason in ("JobCreated", "Running", "Succeeded", "AdapterPublished"):
        assert reason in job.split("Events:", 1)[1], f"{reason} missing from kubectl describe ltj:\n{job}"
    adapter = kube.kubectl("describe", "lad", "tiny-quotes", "-n", "demo-e2e").stdout
    assert "Loaded" in adapter.split("Events:", 1)[1], f"Loaded missing from kubectl describe lad:\n{adapter}"
    assert "LoraEnabled" not in adapter, "the operator restarted vLLM to enable LoRA it already had"
    for kind, condition in (("ltj", "Succeeded"), ("lad", "Ready")):
        kube.kubectl(
            "wait", f"--for=condition={condition}", f"{kind}/tiny-quotes", "-n", "demo-e2e", "--timeout=60s"
        )
    listing = kube.kubectl("get", "lora", "-n", "demo-e2e").stdout
    assert "loratrainingjob.loraplane.io/tiny-quotes" in listing
    assert "loraadapter.loraplane.io/tiny-quotes" in listing
