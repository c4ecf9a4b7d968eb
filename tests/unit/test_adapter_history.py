"""The pure parts of adapter versions: status.history from what the pods hold, and the effect check
(when it is due, how two completions compare, how its result enters the status)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from test_serving_status import lora_adapter, pod, view

from loraplane.api.adapter import HISTORY_LIMIT, LoraAdapter
from loraplane.status import adapter as status_of
from loraplane.status import resolution, versions
from loraplane.status.adapter import Holding, PodResult
from loraplane.status.resolution import Wanted

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
EVALUATION = {"baseLoss": 4.0, "loss": 2.0, "change": "-50.0%", "digest": "sha256:" + "0" * 64}


def job(name: str, uid: str, loss: float = 2.0) -> dict[str, Any]:
    adapter = {"claimName": "loraplane-tiny", "path": f"adapters/{uid}", "r": 8, "sha256": uid * 64}
    return {
        "metadata": {"name": name},
        "status": {"adapter": adapter, "evaluation": {**EVALUATION, "loss": loss}},
    }


def served_from(name: str) -> LoraAdapter:
    return lora_adapter(source={"trainingJob": {"name": name}})


def observe(
    adapter: LoraAdapter, training_job: dict[str, Any], holds: list[bool], now: dt.datetime, **kw: Any
) -> Any:
    """The status after a pass in which pod i holds the wanted version when holds[i]."""
    wanted = resolution.resolve(adapter, view(), training_job)
    assert isinstance(wanted, Wanted)
    pods = [
        PodResult(pod(f"p{i}"), {adapter.metadata["name"]: Holding(loaded=held)}, reachable=True)
        for i, held in enumerate(holds)
    ]
    return status_of.observe(adapter, status_of.Pass(None, wanted, pods), now, **kw)


def test_a_version_enters_the_history_when_every_pod_holds_it_with_its_job_hash_and_evaluation() -> None:
    adapter = served_from("v1")
    loading = observe(adapter, job("v1", "a"), [True, False], T0)
    assert loading.history == [], "one pod of two is not the version serving yet"
    adapter.status = loading
    served = observe(adapter, job("v1", "a"), [True, True], T0 + dt.timedelta(seconds=5))
    [entry] = served.history
    assert (entry.training_job, entry.path, entry.sha256) == ("v1", "/models/adapters/a", "a" * 64)
    assert entry.evaluation is not None
    assert (entry.evaluation.loss, entry.evaluation.base_loss) == (2.0, 4.0)
    assert (entry.serving_since, entry.serving_until) == (T0 + dt.timedelta(seconds=5), None)
    adapter.status = served
    again = observe(adapter, job("v1", "a"), [True, True], T0 + dt.timedelta(minutes=1))
    assert again.history == served.history, "a pass that sees the same version adds nothing"


def test_an_update_and_a_rollback_append_versions_newest_first_and_close_the_one_they_replace() -> None:
    adapter = served_from("v1")
    steps = [("v1", "a"), ("v2", "b"), ("v1", "a")]
    for minute, (name, uid) in enumerate(steps):
        adapter = served_from(name).model_copy(update={"status": adapter.status})
        when = T0 + dt.timedelta(minutes=minute)
        # Mid-swap: one pod holds the new version, the other still the old one: the old one serves on.
        mid = observe(adapter, job(name, uid), [True, False], when)
        assert [e.training_job for e in mid.history] == [e.training_job for e in adapter.status.history]
        adapter.status = observe(adapter, job(name, uid), [True, True], when)
    history = adapter.status.history
    assert [e.training_job for e in history] == ["v1", "v2", "v1"]
    assert [e.serving_since for e in history] == [T0 + dt.timedelta(minutes=m) for m in (2, 1, 0)]
    assert [e.serving_until for e in history] == [
        None,
        T0 + dt.timedelta(minutes=2),
        T0 + dt.timedelta(minutes=1),
    ]
    assert history[1].evaluation is not None


def test_the_history_is_bounded_and_drops_the_oldest() -> None:
    adapter = lora_adapter()
    for n in range(HISTORY_LIMIT + 3):
        adapter = lora_adapter(
            source={"volume": {"claimName": "loraplane-tiny", "path": f"v{n}"}}
        ).model_copy(update={"status": adapter.status})
        adapter.status = observe(adapter, {}, [True], T0 + dt.timedelta(minutes=n))
    paths = [e.path for e in adapter.status.history]
    assert len(paths) == HISTORY_LIMIT
    assert paths[0] == f"/models/v{HISTORY_LIMIT + 2}"
    assert paths[-1] == "/models/v3"
    assert LoraAdapter.model_validate(adapter.model_dump(by_alias=True)).status.history[0].path == paths[0]


def test_a_problem_or_no_pods_records_nothing() -> None:
    adapter = served_from("v1")
    assert observe(adapter, job("v1", "a"), [], T0).history == []
    wanted = resolution.resolve(adapter, view(), job("v1", "a"))
    assert isinstance(wanted, Wanted)
    problem = resolution.Problem("Conflict", "taken")
    pods = [PodResult(pod("p0"), {"quotes": Holding(loaded=True)}, reachable=True)]
    assert status_of.observe(adapter, status_of.Pass(problem, wanted, pods), T0).history == []


def completion(tokens: list[str], logprobs: list[float]) -> versions.Completion:
    answer = {
        "choices": [{"text": "".join(tokens), "logprobs": {"tokens": tokens, "token_logprobs": logprobs}}]
    }
    return versions.Completion.of(answer)


def test_the_same_tokens_and_logprobs_within_the_tolerance_are_no_effect() -> None:
    base = completion([" the", " sea"], [-1.25, -0.5])
    same = completion([" the", " sea"], [-1.25 + versions.LOGPROB_TOLERANCE / 2, -0.5])
    found = versions.compare("/models/a", "Hi", base, same)
    assert (found.status, found.reason) == ("True", "NoEffect")
    assert "' the sea'" in found.message
    assert "keeps serving" in found.message
    nudged = versions.compare("/models/a", "Hi", base, completion([" the", " sea"], [-1.0, -0.5]))
    assert (nudged.status, nudged.reason) == ("False", "ChangesLogprobs")
    assert "0.25" in nudged.message
    changed = versions.compare("/models/a", "Hi", base, completion([" a", " river"], [-0.1, -0.2]))
    assert (changed.status, changed.reason) == ("False", "ChangesOutput")
    assert "' a river'" in changed.message
    assert "' the sea'" in changed.message


def test_the_check_is_due_once_per_version_after_every_pod_holds_it_and_its_result_is_recorded() -> None:
    adapter = served_from("v1")
    partial = observe(adapter, job("v1", "a"), [True, False], T0)
    assert versions.check_due(partial, every_pod_holds=False) is None
    adapter.status = observe(adapter, job("v1", "a"), [True, True], T0)
    assert versions.check_due(adapter.status, every_pod_holds=True) == "/models/adapters/a"
    result = versions.failed("/models/adapters/a", "POST /v1/completions: timed out")
    checked = observe(adapter, job("v1", "a"), [True, True], T0 + dt.timedelta(seconds=3), check=result)
    condition = next(c for c in checked.conditions if c.type == versions.CONDITION)
    assert (condition.status, condition.reason) == ("Unknown", "ProbeFailed")
    assert "timed out" in condition.message
    ready = next(c for c in checked.conditions if c.type == "Ready")
    assert ready.status == "True", "a failed check never holds Ready back"
    assert checked.effect_check is not None
    assert checked.effect_check.path == "/models/adapters/a"
    assert versions.check_due(checked, every_pod_holds=True) is None, "not repeated for this version"
    adapter.status = checked
    again = observe(adapter, job("v1", "a"), [True, True], T0 + dt.timedelta(minutes=1), check=result)
    assert again == checked, "recording the same result again changes nothing (no write)"
    # A new version is checked again; a result for a path that no longer serves is dropped.
    adapter = served_from("v2").model_copy(update={"status": checked})
    moved = observe(adapter, job("v2", "b"), [True, True], T0 + dt.timedelta(minutes=2), check=result)
    assert moved.effect_check == checked.effect_check
    assert versions.check_due(moved, every_pod_holds=True) == "/models/adapters/b"


def test_the_probe_prompt_defaults_and_is_per_adapter() -> None:
    assert versions.probe_prompt(lora_adapter()) == "The meaning of life is"
    assert versions.probe_prompt(lora_adapter(probePrompt="A quote about")) == "A quote about"


def test_the_pod_asked_holds_the_adapter_and_answered() -> None:
    lacking = PodResult(pod("p0", ip="10.0.0.1"), {"quotes": Holding()}, reachable=True)
    silent = PodResult(pod("p1", ip="10.0.0.2"), {"quotes": Holding(loaded=True)}, reachable=False)
    holder = PodResult(pod("p2", ip="10.0.0.3"), {"quotes": Holding(loaded=True)}, reachable=True)
    seen = status_of.Pass(None, None, [lacking, silent, holder])
    assert status_of.pod_to_ask("quotes", seen) == "10.0.0.3"
    assert status_of.pod_to_ask("quotes", status_of.Pass(None, None, [lacking])) is None


def test_adapters_serving_the_same_files_share_one_check_and_one_recording_pass(monkeypatch: Any) -> None:
    """A thousand LoraAdapters of one folder: two completions in all, and a pass shortly after, not
    one per result."""
    import asyncio  # noqa: PLC0415

    from loraplane.handlers.adapters import controller  # noqa: PLC0415
    from loraplane.handlers.adapters.indexes import Indexes  # noqa: PLC0415
    from loraplane.handlers.adapters.state import Outcome  # noqa: PLC0415

    asked: list[str] = []

    async def run(server: Any, base: str, served: str, path: str, prompt: str) -> versions.CheckResult:
        asked.append(served)
        return versions.CheckResult(path, "False", "ChangesOutput", "it changes the answer")

    monkeypatch.setattr(controller.effect_check, "run", run)
    monkeypatch.setattr(controller.versions, "check_due", lambda status, holds: "/models/adapters/a")
    monkeypatch.setattr(controller.status_of, "pod_to_ask", lambda name, seen: "10.250.1.9")
    monkeypatch.setattr(controller, "RECORD_CHECKS_AFTER_S", 0.01)
    indexes = Indexes(adapters={}, deployments={}, pods={}, training_jobs={})  # type: ignore[arg-type]

    async def scenario() -> None:
        task = controller.Controller("ns", "d", indexes)
        outcome = Outcome(port=8000, base_model="tiny-llama")
        adapters = [lora_adapter(name=f"a{i}") for i in range(50)]
        for i, adapter in enumerate(adapters):
            task.start_check(adapter, f"uid-{i}", adapter.status, status_of.Pass(None, None, []), outcome)
        while task.checking:
            await asyncio.gather(*task.checking.values())
        for i, adapter in enumerate(adapters):  # a later pass: the result is known for these files
            task.start_check(adapter, f"later-{i}", adapter.status, status_of.Pass(None, None, []), outcome)
        assert len(asked) == 1
        assert set(task.checked) == {f"uid-{i}" for i in range(50)} | {f"later-{i}" for i in range(50)}
        await asyncio.wait_for(task.wakeup.wait(), timeout=5)
        assert task.record_due is None

    asyncio.run(scenario())
