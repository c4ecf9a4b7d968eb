"""OnDemand adapters (`spec.serving.mode: OnDemand`), the pure parts: vLLM's filesystem resolver in the
pod template, resolution to the served name's link in the pod's cache, what the fetcher is told, the
cached config naming the server's `--model`, and the status words (Catalogued, not Loaded)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from test_adapter_pass import (
    Cluster,
    Vllm,
    cluster,
    fetcher_port,
    lora_adapter,
    pod_of,
    ready,
    run_pass,
    vllm,
)

from loraplane import fetcher
from loraplane.api.adapter import LoraAdapter
from loraplane.api.storage import S3Connection
from loraplane.builders import serving
from loraplane.builders.serving import DeploymentView, merged
from loraplane.crdgen import adapter_crd
from loraplane.handlers.adapters import deployment_changes, pod_loading, reconciler
from loraplane.handlers.adapters.indexes import Indexes, slim_pod
from loraplane.handlers.adapters.reconciler import RECONCILERS, reconcile_deployment
from loraplane.settings import Settings
from loraplane.status import adapter as status_of
from loraplane.status import resolution
from loraplane.status.adapter import Holding, PodResult, PodView
from loraplane.status.resolution import Problem, Wanted
from loraplane.status.versions import record_version
from loraplane_worker.fetch import MAX_REQUEST_BYTES, Cache, WantedAdapter, name_base_model
from loraplane_worker.fetch import Wanted as FetchList
from manifests import EXAMPLES

__all__ = ["cluster", "fetcher_port", "vllm"]  # fixtures of the pass tests, used here too

SETTINGS = serving.FetcherSettings(image="ghcr.io/loraplane/worker:0.1.0", port=8471, cache_mib=1000)
DIGEST = "cd" * 32


def example() -> dict[str, Any]:
    deployment = next(iter(yaml.safe_load_all((EXAMPLES / "tiny-cpu" / "vllm-deployment.yaml").read_text())))
    deployment["metadata"]["resourceVersion"] = "7"
    return dict(deployment)


def vllm_env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    return {e["name"]: e for e in container.get("env") or []}


# ---- the pod template -------------------------------------------------------------------------------


def test_the_resolver_reads_the_fetchers_cache_in_vllm_only_and_goes_with_the_fetcher() -> None:
    plain = merged(example(), serving.fetcher_patch(example(), SETTINGS, []) or {})
    assert serving.RESOLVER_ENV not in vllm_env(plain), "HotLoad alone needs no resolver"
    assert not DeploymentView.of(plain).resolver_on
    patch = serving.fetcher_patch(example(), SETTINGS, [], catalogue=True)
    assert patch is not None
    after = merged(example(), patch)
    env = vllm_env(after)
    assert env[serving.RESOLVER_ENV] == {"name": serving.RESOLVER_ENV, "value": serving.CACHE_MOUNT}
    assert serving.PLUGINS_ENV not in env, "unset, vLLM loads every installed plugin, the resolver too"
    fetcher_env = next(
        c for c in after["spec"]["template"]["spec"]["containers"] if c["name"] == serving.FETCHER_CONTAINER
    )["env"]
    assert serving.RESOLVER_ENV not in {e["name"] for e in fetcher_env}
    view = DeploymentView.of(after)
    assert view.resolver_on
    assert view.has_fetcher
    assert serving.fetcher_patch(after, SETTINGS, [], catalogue=True) is None, "written once"
    assert serving.fetcher_patch(after, SETTINGS, []) is None, "and not taken off again (a restart)"
    # The one template change also turns the resolver on when the fetcher is already there.
    assert serving.fetcher_patch(plain, SETTINGS, [], catalogue=True) is not None

    restored = merged(after, serving.cleanup_patch(after) or {})
    assert serving.RESOLVER_ENV not in vllm_env(restored)
    assert vllm_env(restored) == vllm_env(example())


def test_a_users_plugin_list_gets_the_resolver_added_and_back_as_it_was_on_cleanup() -> None:
    before = example()
    container = before["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": serving.PLUGINS_ENV, "value": "my_plugin"})
    after = merged(before, serving.fetcher_patch(before, SETTINGS, [], catalogue=True) or {})
    assert vllm_env(after)[serving.PLUGINS_ENV]["value"] == f"my_plugin,{serving.RESOLVER_PLUGIN}"
    assert DeploymentView.of(after).resolver_on
    restored = merged(after, serving.cleanup_patch(after) or {})
    assert vllm_env(restored)[serving.PLUGINS_ENV] == {"name": serving.PLUGINS_ENV, "value": "my_plugin"}
    assert serving.RESOLVER_ENV not in vllm_env(restored)


def test_the_view_reads_the_model_string_the_resolver_compares_with() -> None:
    assert DeploymentView.of(example()).model == "/models/model"
    served = DeploymentView.of(example()).base_model_name
    assert served == "tiny-llama", "the served name is not what the resolver compares"
    positional = copy.deepcopy(example())
    container = positional["spec"]["template"]["spec"]["containers"][0]
    container["command"], container["args"] = ["vllm", "serve"], ["org/model", "--port", "8000"]
    assert DeploymentView.of(positional).model == "org/model"


# ---- resolution -------------------------------------------------------------------------------------


def adapter(source: dict[str, Any], mode: str = "OnDemand", base_model: str = "tiny-llama") -> LoraAdapter:
    return LoraAdapter.model_validate({
        "metadata": {"name": "sql", "generation": 2},
        "spec": {"baseModel": base_model, "source": source,
                 "serving": {"deployment": "vllm-tiny", "mode": mode}},
    })  # fmt: skip


def test_an_on_demand_adapter_resolves_to_its_served_names_link_whatever_its_digest() -> None:
    view = DeploymentView.of(example())
    found = resolution.resolve(adapter({"s3": {"uri": "s3://adapters/sql", "sha256": DIGEST}}), view, None)
    assert isinstance(found, Wanted)
    assert found.path == f"{serving.CACHE_MOUNT}/sql", "where vLLM's filesystem resolver looks"
    assert (found.mode, found.sha256) == ("OnDemand", DIGEST)
    assert found.fetch is not None
    hot = resolution.resolve(
        adapter({"s3": {"uri": "s3://adapters/sql", "sha256": DIGEST}}, "HotLoad"), view, None
    )
    assert isinstance(hot, Wanted)
    assert hot.path == f"{serving.CACHE_MOUNT}/.objects/{DIGEST}"
    by_path = resolution.resolve(
        adapter({"s3": {"uri": "s3://adapters/sql"}}, base_model="/models/model"), view, None
    )
    assert isinstance(by_path, Wanted), "the --model path names the base model too"


def test_an_on_demand_adapter_needs_the_store_and_the_servers_base_model() -> None:
    view = DeploymentView.of(example())
    from_volume = resolution.resolve(
        adapter({"volume": {"claimName": "loraplane-tiny", "path": "adapters/a"}}), view, None
    )
    assert isinstance(from_volume, Problem)
    assert from_volume.reason == "InvalidSpec"
    assert "spec.serving.mode OnDemand" in from_volume.message
    assert "spec.source.s3" in from_volume.message
    job = {"status": {"adapter": {"claimName": "loraplane-tiny", "path": "adapters/x", "r": 8}}}
    from_claim_job = resolution.resolve(adapter({"trainingJob": {"name": "j"}}), view, job)
    assert isinstance(from_claim_job, Problem)
    assert from_claim_job.reason == "InvalidSpec", "a job that wrote to a claim: the same answer"
    other = resolution.resolve(
        adapter({"s3": {"uri": "s3://adapters/sql"}}, base_model="llama-70b"), view, None
    )
    assert isinstance(other, Problem)
    assert other.reason == "BaseModelMismatch"
    assert other.reason in resolution.TERMINAL_REASONS
    assert "llama-70b" in other.message
    assert "tiny-llama" in other.message


def test_the_crd_refuses_an_on_demand_adapter_from_a_volume_with_the_same_words() -> None:
    schema = adapter_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = schema["x-kubernetes-validations"]
    assert any("OnDemand" in r["rule"] and r["fieldPath"] == ".serving.mode" for r in rules)
    assert "OnDemand" in schema["properties"]["serving"]["properties"]["mode"]["enum"]
    with pytest.raises(ValidationError):
        adapter({"s3": {"uri": "s3://adapters/sql"}}, mode="Lazy")


# ---- what the fetcher is told, and what it writes ---------------------------------------------------


def wanted(name: str, mode: str = "OnDemand") -> Wanted:
    fetch = resolution.Fetch("s3://adapters/one", S3Connection(endpoint="http://s:9000"), DIGEST)
    return Wanted(adapter=name, served_name=name, path=f"{serving.CACHE_MOUNT}/{name}", mode=mode,
                  base_model="tiny-llama", sha256=DIGEST, fetch=fetch)  # fmt: skip


def test_one_wanted_list_names_every_catalogued_adapter_and_the_servers_model() -> None:
    wants = [wanted(f"a{i:04d}") for i in range(1000)] + [wanted("warm", "HotLoad")]
    body = fetcher.wanted_list(wants, "9", "/models/model")
    assert len(body["adapters"]) == 1001
    assert body["baseModel"] == "/models/model"
    parsed = FetchList.model_validate(body)
    assert parsed.base_model == "/models/model"
    assert len(json.dumps(body)) < MAX_REQUEST_BYTES // 4, "well within the fetcher's request limit"
    assert "baseModel" not in fetcher.wanted_list(wants, "9"), "no model known: configs stay as trained"


def test_the_cached_config_names_the_servers_model_and_the_weights_stay_as_verified(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    folder = cache.objects / DIGEST
    folder.mkdir(parents=True)
    weights = b"\x01" * 1024
    (folder / "adapter_model.safetensors").write_bytes(weights)
    trained = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "/mnt/claims/x/model"}
    (folder / "adapter_config.json").write_text(json.dumps(trained))
    (folder / "loraplane-manifest.json").write_text("{}")
    # An object the cache holds already: linked under the new name, its config made to say the model.
    digest = cache.fetch(store=None, wanted=WantedAdapter(name="sql", uri="s3://adapters/one", sha256=DIGEST),  # type: ignore[arg-type]
                         base_model="/models/model")  # fmt: skip
    assert digest == DIGEST
    config = json.loads((tmp_path / "sql" / "adapter_config.json").read_text())
    assert config == {**trained, "base_model_name_or_path": "/models/model"}
    assert (tmp_path / "sql" / "adapter_model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "loraplane-manifest.json"
    ], "no temporary file left behind"  # fmt: skip
    before = (folder / "adapter_config.json").stat().st_mtime_ns
    name_base_model(folder, "/models/model")
    assert (folder / "adapter_config.json").stat().st_mtime_ns == before, "already right: not rewritten"
    name_base_model(folder, None)
    assert (
        json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "/models/model"
    )


# ---- status -----------------------------------------------------------------------------------------


def pod(name: str, ready: bool = True) -> PodView:
    return PodView(name=name, ip="10.0.0.1", phase="Running", containers_ready=True, ready=ready,
                   deleting=False, started_at=None, restart_count=0, gated=True, gate_status="True",
                   gate_reason=None, gate_since=None)  # fmt: skip


def test_catalogued_on_every_pod_is_ready_as_catalogued_and_lists_no_pod() -> None:
    body = adapter({"s3": {"uri": "s3://adapters/sql", "sha256": DIGEST}})
    want = wanted("sql")
    held = [
        PodResult(view=pod(n), holdings={"sql": Holding(loaded=True)}, reachable=True) for n in ("a", "b")
    ]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    status = status_of.observe(body, status_of.Pass(None, want, held), now)
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("True", "Catalogued")
    assert "catalogued on 2/2 pods" in ready.message
    assert (status.ready_replicas, status.replicas, status.pods) == (2, 2, [])
    assert status.path == f"{serving.CACHE_MOUNT}/sql"
    fetching = Holding(
        reason=fetcher.FETCHING, error="fetching s3://adapters/one into the pod's adapter cache"
    )
    half = [held[0], PodResult(view=pod("b"), holdings={"sql": fetching}, reachable=True)]
    status = status_of.observe(body, status_of.Pass(None, want, half), now)
    ready = next(c for c in status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "Fetching")
    assert [p.pod for p in status.pods] == ["b"], "only the pod that lacks it is listed"


# ---- one pass: catalogued, not loaded; the gate waits for the warm ones only; deleted: unlinked, unloaded


def catalogued_object(cache: Path, digest: str = DIGEST) -> None:
    """The object the fetcher would have fetched already (no store traffic in a unit test)."""
    folder = cache / ".objects" / digest
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (folder / "loraplane-manifest.json").write_text("{}")


def test_a_pass_catalogues_without_loading_swaps_versions_and_a_deleted_one_leaves_cache_and_server(
    cluster: Cluster, vllm: int, fetcher_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(serving_fetcher_port=fetcher_port)
    for module in (pod_loading, deployment_changes, reconciler):
        monkeypatch.setattr(module, "get_settings", lambda: settings)
    catalogued_object(tmp_path / "cache")
    namespace = cluster.deployment["metadata"]["namespace"]
    body = lora_adapter(namespace, mode="OnDemand")
    body["spec"]["source"] = {"s3": {"uri": "s3://adapters/quotes", "sha256": DIGEST,
                                     "connection": {"endpoint": "http://127.0.0.1:1"}}}  # fmt: skip
    run_pass(cluster, body, [pod_of(cluster.deployment, "vllm-tiny-old", "h1")])
    assert len(cluster.written) == 1, "LoRA, the fetcher and the resolver in one change: one restart"
    assert DeploymentView.of(cluster.deployment).resolver_on
    started = pod_of(cluster.deployment, "vllm-tiny-a", "h2")
    started["status"]["conditions"].append({"type": serving.GATE, "status": "False", "reason": "Loading"})
    Vllm.runtime_api = True
    status = run_pass(cluster, body, [started])
    assert ready(status)[:2] == ("True", "Catalogued"), ready(status)
    assert "/v1/load_lora_adapter" not in Vllm.posts, "catalogued, never loaded through the API"
    assert ("vllm-tiny-a", "True", "AdaptersLoaded") in cluster.gates
    link = tmp_path / "cache" / "quotes"
    assert (
        json.loads((link / "adapter_config.json").read_text())["base_model_name_or_path"] == "/models/model"
    )
    assert cluster.records[-1] == ["quotes"], "a catalogued name is loraplane's to unload"

    # vLLM's resolver loaded it on a request, and a pass saw it there.
    Vllm.adapters["quotes"] = f"{serving.CACHE_MOUNT}/quotes"
    Vllm.adapters["by-hand"] = "/models/adapters/mine"
    opened = pod_of(cluster.deployment, "vllm-tiny-a", "h2")
    gate = {"type": serving.GATE, "status": "True", "reason": "AdaptersLoaded"}
    opened["status"]["conditions"].append(gate)
    assert ready(run_pass(cluster, body, [opened]))[:2] == ("True", "Catalogued")
    assert "/v1/unload_lora_adapter" not in Vllm.posts

    # A new version: the link now names another object, so the name is unloaded (vLLM would go on
    # serving the old weights from memory) and the next request loads the new files.
    newer, version = "ef" * 32, copy.deepcopy(body)
    catalogued_object(tmp_path / "cache", newer)
    version["spec"]["source"]["s3"]["sha256"] = newer
    version["metadata"]["generation"] = 2
    assert ready(run_pass(cluster, version, [opened]))[:2] == ("True", "Catalogued")
    assert link.resolve().name == newer
    assert Vllm.posts.count("/v1/unload_lora_adapter") == 1
    assert "quotes" not in Vllm.adapters
    Vllm.adapters["quotes"] = f"{serving.CACHE_MOUNT}/quotes"  # its next request
    run_pass(cluster, version, [opened])
    assert Vllm.posts.count("/v1/unload_lora_adapter") == 1, "the new version stays"

    # Then the adapter is deleted.
    gone = copy.deepcopy(version)
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    indexes = Indexes(
        adapters={(namespace, "vllm-tiny"): [gone]},  # type: ignore[arg-type]
        deployments={(namespace, "vllm-tiny"): [cluster.deployment]},  # type: ignore[arg-type]
        pods={namespace: [slim_pod(opened)]},  # type: ignore[arg-type]
        training_jobs={},  # type: ignore[arg-type]
    )
    outcome = asyncio.run(reconcile_deployment(namespace, "vllm-tiny", indexes))
    assert "quotes" not in outcome.unwanted_held, "the finalizer may finish"
    assert not link.exists(), "unlinked from the cache: the resolver cannot bring it back"
    assert Vllm.posts.count("/v1/unload_lora_adapter") == 2
    assert set(Vllm.adapters) == {"by-hand"}, "what a user loaded by hand stays"


def test_a_new_version_of_an_on_demand_adapter_enters_the_history_though_its_path_stays() -> None:
    first = wanted("sql")
    newer = dataclasses.replace(first, sha256="ef" * 32)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    history = record_version([], first, True, now)
    assert record_version(history, first, True, now) == history
    history = record_version(history, newer, True, now + dt.timedelta(minutes=1))
    assert [e.sha256 for e in history] == ["ef" * 32, DIGEST]
    assert {e.path for e in history} == {f"{serving.CACHE_MOUNT}/sql"}


# ---- the record of the version vLLM loaded: in the cluster, read again by a restarted operator ------

RUN = "vllm-tiny-a/2025-01-01T00:00:00Z"  # "pod/startedAt" of pod_of's pods
NEWER = "ef" * 32


def test_the_record_keeps_each_pod_runs_digests_compactly_and_reads_back_what_it_wrote() -> None:
    deployment = example() | {"metadata": {**example()["metadata"], "uid": "d-uid", "namespace": "ns"}}
    loaded = {(RUN, "sql"): DIGEST, (RUN, "chat"): NEWER, ("vllm-tiny-b/2025-01-02T00:00:00Z", "sql"): DIGEST}
    body = serving.record_config_map(deployment, frozenset({"sql", "chat"}), loaded)
    assert serving.loaded_record(body) == {"sql", "chat"}
    assert serving.on_demand_record(body) == loaded
    data = body["data"][serving.ON_DEMAND_KEY]
    assert json.loads(data)[RUN] == {"chat": NEWER, "sql": DIGEST}, "grouped by pod run"
    assert " " not in data
    assert serving.CACHE_MOUNT not in json.dumps(body["data"]), "digests, no paths"
    again = serving.record_config_map(deployment, frozenset({"chat", "sql"}), dict(reversed(loaded.items())))
    assert again == body, "the same entries give the same text: nothing to write"
    assert json.loads(serving.record_config_map(deployment, frozenset())["data"][serving.ON_DEMAND_KEY]) == {}


def test_a_record_of_the_previous_version_or_a_damaged_one_reads_as_no_digest_known() -> None:
    previous = {"data": {serving.RECORD_KEY: '["sql"]'}}  # only the names, as loraplane wrote before
    assert serving.loaded_record(previous) == {"sql"}
    assert serving.on_demand_record(previous) == {}
    assert serving.on_demand_record(None) == {}
    damaged_ones = ("not json", "[]", '{"p/t": ["sql"]}', '{"p/t": {"sql": "/x"}}', '{"p/t": {"s": 1}}')
    for damaged in damaged_ones:
        assert serving.on_demand_record({"data": {serving.ON_DEMAND_KEY: damaged}}) == {}, damaged
    mixed = '{"p/t": {"sql": "' + DIGEST + '", "bad": "' + DIGEST.upper() + '"}}'
    assert serving.on_demand_record({"data": {serving.ON_DEMAND_KEY: mixed}}) == {("p/t", "sql"): DIGEST}


def test_a_thousand_on_demand_adapters_loaded_on_two_pods_keep_the_record_well_within_a_config_map() -> None:
    deployment = example() | {"metadata": {**example()["metadata"], "uid": "d-uid", "namespace": "ns"}}
    names = [f"tenant-{i:04d}" for i in range(1000)]
    runs = [RUN, "vllm-tiny-b/2025-01-02T00:00:00Z"]
    body = serving.record_config_map(
        deployment, frozenset(names), {(run, n): DIGEST for run in runs for n in names}
    )
    size = len(json.dumps(body["data"]))
    assert size < 200 * 1024, f"{size} bytes; a ConfigMap holds up to 1 MiB"


def on_demand_held(
    cluster: Cluster, fetcher_port: int, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An OnDemand adapter catalogued on one pod whose vLLM loaded it on a request, and a pass that saw
    it there: the adapter's body and the pod."""
    settings = Settings(serving_fetcher_port=fetcher_port)
    for module in (pod_loading, deployment_changes, reconciler):
        monkeypatch.setattr(module, "get_settings", lambda: settings)
    catalogued_object(cache)
    body = lora_adapter(cluster.deployment["metadata"]["namespace"], mode="OnDemand")
    body["spec"]["source"] = {"s3": {"uri": "s3://adapters/quotes", "sha256": DIGEST,
                                     "connection": {"endpoint": "http://127.0.0.1:1"}}}  # fmt: skip
    run_pass(cluster, body, [pod_of(cluster.deployment, "vllm-tiny-old", "h1")])  # enables the resolver
    pod = pod_of(cluster.deployment, "vllm-tiny-a", "h2")
    pod["status"]["conditions"].append({"type": serving.GATE, "status": "True", "reason": "AdaptersLoaded"})
    Vllm.runtime_api = True
    assert ready(run_pass(cluster, body, [pod]))[:2] == ("True", "Catalogued")
    Vllm.adapters["quotes"] = f"{serving.CACHE_MOUNT}/quotes"  # the resolver loaded it on a request
    run_pass(cluster, body, [pod])
    return body, pod


def recorded_digests(cluster: Cluster) -> dict[tuple[str, str], str]:
    return serving.on_demand_record(cluster.config_maps[serving.record_name("vllm-tiny")])


def new_version(body: dict[str, Any], cache: Path) -> dict[str, Any]:
    """The adapter at another digest, whose object the pod's cache holds already."""
    catalogued_object(cache, NEWER)
    version = copy.deepcopy(body)
    version["spec"]["source"]["s3"]["sha256"] = NEWER
    version["metadata"]["generation"] = 3
    return version


def test_a_restarted_operator_unloads_what_vllm_loaded_before_the_cache_took_a_new_version(
    cluster: Cluster, vllm: int, fetcher_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, pod = on_demand_held(cluster, fetcher_port, tmp_path / "cache", monkeypatch)
    assert recorded_digests(cluster) == {(RUN, "quotes"): DIGEST}, "the version vLLM loaded, in the cluster"
    writes = len(cluster.records)
    run_pass(cluster, body, [pod])
    assert len(cluster.records) == writes, "a pass that sees nothing new writes nothing"

    # The operator restarts (nothing in memory), and the adapter got a new version while it was down.
    RECONCILERS.clear()
    version = new_version(body, tmp_path / "cache")
    assert ready(run_pass(cluster, version, [pod]))[:2] == ("True", "Catalogued")
    assert (tmp_path / "cache" / "quotes").resolve().name == NEWER
    assert Vllm.posts.count("/v1/unload_lora_adapter") == 1, "vLLM would serve the old weights on"
    assert "quotes" not in Vllm.adapters
    assert recorded_digests(cluster) == {}, "nothing loaded of it any more"

    Vllm.adapters["quotes"] = f"{serving.CACHE_MOUNT}/quotes"  # its next request loads the new files
    RECONCILERS.clear()
    run_pass(cluster, version, [pod])
    assert recorded_digests(cluster) == {(RUN, "quotes"): NEWER}
    RECONCILERS.clear()
    run_pass(cluster, version, [pod])
    assert Vllm.posts.count("/v1/unload_lora_adapter") == 1, "the new version stays"


def test_a_restarted_operator_whose_pods_hold_the_current_version_unloads_and_writes_nothing(
    cluster: Cluster, vllm: int, fetcher_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, pod = on_demand_held(cluster, fetcher_port, tmp_path / "cache", monkeypatch)
    writes = len(cluster.records)
    RECONCILERS.clear()
    assert ready(run_pass(cluster, body, [pod]))[:2] == ("True", "Catalogued")
    assert "/v1/unload_lora_adapter" not in Vllm.posts
    assert len(cluster.records) == writes, "the record read back is what the pass would write"


def test_a_record_from_the_previous_version_is_read_and_gets_the_digests_added(
    cluster: Cluster, vllm: int, fetcher_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, pod = on_demand_held(cluster, fetcher_port, tmp_path / "cache", monkeypatch)
    record = cluster.config_maps[serving.record_name("vllm-tiny")]
    del record["data"][serving.ON_DEMAND_KEY]  # as an earlier loraplane wrote it
    RECONCILERS.clear()
    run_pass(cluster, body, [pod])
    assert "/v1/unload_lora_adapter" not in Vllm.posts
    assert serving.loaded_record(record) == {"quotes"}
    assert recorded_digests(cluster) == {(RUN, "quotes"): DIGEST}, "no digest known: the cache's"


def test_the_digests_of_a_pod_that_went_or_restarted_leave_the_record(
    cluster: Cluster, vllm: int, fetcher_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, pod = on_demand_held(cluster, fetcher_port, tmp_path / "cache", monkeypatch)
    restarted = copy.deepcopy(pod)
    restarted["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] = "2025-01-01T01:00:00Z"
    Vllm.adapters.clear()  # a new run of vLLM holds nothing yet
    run_pass(cluster, body, [restarted])
    assert recorded_digests(cluster) == {}
    Vllm.adapters["quotes"] = f"{serving.CACHE_MOUNT}/quotes"
    run_pass(cluster, body, [restarted])
    assert recorded_digests(cluster) == {("vllm-tiny-a/2025-01-01T01:00:00Z", "quotes"): DIGEST}
    other = pod_of(cluster.deployment, "vllm-tiny-b", "h2")
    other["status"]["podIP"] = "127.0.0.2"  # another pod, not answering yet: the first one is gone
    run_pass(cluster, body, [other])
    assert recorded_digests(cluster) == {}
