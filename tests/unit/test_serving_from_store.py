"""Serving adapters from the object store, the pure parts: the pod template patch that adds the
fetcher and its cache (and cleanup's undoing of it), resolution of `source.s3` and of a job's S3
result to a path in the pod's cache, the wanted list sent to a pod's fetcher and what each of its
answers means, and the fetcher's cache budget (evicting unwanted adapters, oldest first)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from loraplane import fetcher
from loraplane.api.adapter import LoraAdapter
from loraplane.api.storage import S3Connection, S3CredentialsSecret
from loraplane.builders import serving
from loraplane.builders.serving import DeploymentView, merged
from loraplane.status import resolution
from loraplane.status.resolution import Problem, Wanted
from loraplane_worker.fetch import Cache, Fetcher, WantedAdapter
from loraplane_worker.fetch import Wanted as FetchList
from loraplane_worker.storage import PermanentStoreError
from manifests import EXAMPLES

SETTINGS = serving.FetcherSettings(image="ghcr.io/loraplane/worker:0.1.0", port=8471, cache_mib=1000)
CREDS = S3CredentialsSecret(name="store-creds")
DIGEST = "ab" * 32


def example() -> dict[str, Any]:
    deployment = next(iter(yaml.safe_load_all((EXAMPLES / "tiny-cpu" / "vllm-deployment.yaml").read_text())))
    deployment["metadata"]["resourceVersion"] = "7"
    return dict(deployment)


def with_fetcher(deployment: dict[str, Any], secrets: list[S3CredentialsSecret]) -> dict[str, Any]:
    patch = serving.fetcher_patch(deployment, SETTINGS, secrets)
    assert patch is not None
    return merged(deployment, patch)


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


# ---- the pod template ----------------------------------------------------------------------------


def test_the_fetcher_shares_a_bounded_cache_with_vllm_and_gets_only_store_credentials() -> None:
    before = example()
    after = with_fetcher(before, [CREDS])
    spec = after["spec"]["template"]["spec"]
    vllm, fetch = containers(after)["vllm"], containers(after)[serving.FETCHER_CONTAINER]
    assert {"name": serving.CACHE_VOLUME, "mountPath": serving.CACHE_MOUNT, "readOnly": True} in vllm[
        "volumeMounts"
    ]
    assert vllm["args"] == containers(before)["vllm"]["args"], "vLLM's own settings untouched"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[serving.CACHE_VOLUME] == {
        "name": serving.CACHE_VOLUME,
        "emptyDir": {"sizeLimit": "1000Mi"},
    }
    assert "tiny" in volumes, "the user's volumes stay"
    assert fetch["image"] == SETTINGS.image
    assert fetch["command"] == ["python", "-m", "loraplane_worker.fetch"]
    assert fetch["args"][:2] == ["--listen", "$(POD_IP):8471"]
    assert fetch["args"][fetch["args"].index("--max-mib") + 1] == "900", "kept below the emptyDir's limit"
    # No API token: its own empty folder on the token path makes the admission plugin skip it.
    assert {"name": serving.NO_TOKEN_VOLUME, "mountPath": serving.TOKEN_PATH, "readOnly": True} in fetch[
        "volumeMounts"
    ]
    assert fetch["securityContext"]["allowPrivilegeEscalation"] is False
    prefix = serving.credentials_env_prefix(CREDS)
    by_name = {e["name"]: e for e in fetch["env"]}
    assert by_name[f"{prefix}_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "store-creds", "key": "accessKeyId", "optional": True,
    }  # fmt: skip
    assert all("value" not in e for e in fetch["env"]), "credentials by reference only"
    assert set(by_name) == {
        "POD_IP",
        *(f"{prefix}_{s}" for s in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN")),
    }


def test_the_fetcher_patch_is_written_once_and_again_only_when_the_secrets_change() -> None:
    once = with_fetcher(example(), [CREDS])
    # What the API server stores differs from what was asked (defaults added): still no change.
    stored = copy.deepcopy(once)
    containers(stored)[serving.FETCHER_CONTAINER]["imagePullPolicy"] = "IfNotPresent"
    assert serving.fetcher_patch(stored, SETTINGS, [CREDS]) is None
    assert serving.fetcher_patch(stored, SETTINGS, [CREDS, CREDS]) is None
    other = S3CredentialsSecret(name="team-b")
    twice = with_fetcher(stored, [other, CREDS])
    names = [c["name"] for c in twice["spec"]["template"]["spec"]["containers"]]
    assert names.count(serving.FETCHER_CONTAINER) == 1
    assert len(containers(twice)["vllm"]["volumeMounts"]) == len(containers(once)["vllm"]["volumeMounts"])
    variables = {e["name"] for e in containers(twice)[serving.FETCHER_CONTAINER]["env"]}
    assert serving.credentials_env_prefix(other) + "_ACCESS_KEY_ID" in variables
    # Someone's apply dropped the container: it is added back.
    dropped = copy.deepcopy(twice)
    dropped["spec"]["template"]["spec"]["containers"] = [containers(twice)["vllm"]]
    assert serving.fetcher_patch(dropped, SETTINGS, [other, CREDS]) is not None


def test_a_view_knows_whether_the_template_has_the_fetcher() -> None:
    assert not DeploymentView.of(example()).has_fetcher
    assert DeploymentView.of(with_fetcher(example(), [])).has_fetcher


def test_enabling_lora_after_the_fetcher_keeps_its_record_and_cleanup_takes_both_out() -> None:
    before = example()
    fetching = with_fetcher(before, [CREDS])
    lora = serving.enable_lora_patch(fetching, serving.LoraSettings(4, 8), None)
    assert lora is not None
    both = merged(fetching, lora)
    assert serving.recorded_settings(both)["fetcher"], "enabling LoRA keeps the fetcher's record"
    undo = serving.cleanup_patch(both)
    assert undo is not None
    restored = merged(both, undo)
    spec = restored["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["vllm"]
    assert spec["volumes"] == before["spec"]["template"]["spec"]["volumes"]
    assert containers(restored)["vllm"]["volumeMounts"] == containers(before)["vllm"]["volumeMounts"]


def test_credential_prefixes_differ_for_every_secret_reference() -> None:
    def prefix(name: str, **keys: str) -> str:
        return serving.credentials_env_prefix(S3CredentialsSecret(name=name, **keys))

    assert prefix("a-b") != prefix("ab")
    assert prefix("a-b") != prefix("a-b", access_key_id_key="id"), "same Secret, other keys: other variables"
    assert prefix("a-b").isidentifier()


# ---- resolution -------------------------------------------------------------------------------------


def adapter(source: dict[str, Any], **spec: Any) -> LoraAdapter:
    return LoraAdapter.model_validate({
        "metadata": {"name": "sql", "generation": 3},
        "spec": {"baseModel": "tiny-llama", "source": source, "serving": {"deployment": "vllm-tiny"}, **spec},
    })  # fmt: skip


def test_a_store_source_resolves_to_the_pods_cache_with_the_chart_defaults_filled_in() -> None:
    view = DeploymentView.of(example())
    defaults = S3Connection(endpoint="http://store:9000", credentials_secret=CREDS)
    pinned = resolution.resolve(
        adapter({"s3": {"uri": "s3://adapters/sql", "sha256": DIGEST, "connection": {"region": "eu-1"}}}),
        view,
        None,
        defaults,
    )
    assert isinstance(pinned, Wanted)
    assert pinned.path == f"{serving.CACHE_MOUNT}/.objects/{DIGEST}"
    assert pinned.sha256 == DIGEST
    assert pinned.fetch is not None
    assert (pinned.fetch.connection.endpoint, pinned.fetch.connection.region) == ("http://store:9000", "eu-1")
    assert pinned.fetch.credentials == serving.credentials_env_prefix(CREDS)
    assert pinned.generation == 3
    unpinned = resolution.resolve(adapter({"s3": {"uri": "s3://adapters/sql"}}), view, None, defaults)
    assert isinstance(unpinned, Wanted)
    assert unpinned.path == f"{serving.CACHE_MOUNT}/sql", "the served name's link in the cache"


def test_a_store_source_needs_no_mounted_claim_but_a_volume_source_still_does() -> None:
    view = DeploymentView.of({"metadata": {"name": "vllm-tiny"}, "spec": {"template": {"spec": {
        "containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]}}}})  # fmt: skip
    assert isinstance(resolution.resolve(adapter({"s3": {"uri": "s3://adapters/sql"}}), view, None), Wanted)
    claimed = resolution.resolve(adapter({"volume": {"claimName": "c", "path": "a"}}), view, None)
    assert isinstance(claimed, Problem)
    assert claimed.reason == "VolumeNotMounted"


def test_exactly_one_source_and_a_well_formed_digest() -> None:
    with pytest.raises(ValidationError):
        adapter({"s3": {"uri": "s3://adapters/sql", "sha256": "not-a-digest"}})
    with pytest.raises(ValidationError):
        adapter({"s3": {"uri": "gs://adapters/sql"}})


# ---- what the operator sends a pod's fetcher, and reads back -----------------------------------------


def wanted(**fields: Any) -> Wanted:
    fetch = resolution.Fetch(
        "s3://adapters/sql", S3Connection(endpoint="http://s:9000", credentials_secret=CREDS), DIGEST
    )
    base: dict[str, Any] = {"adapter": "sql", "served_name": "sql-v1", "path": "/p", "mode": "HotLoad",
                            "base_model": "tiny-llama", "fetch": fetch, "generation": 3}  # fmt: skip
    return Wanted(**{**base, **fields})


def test_the_wanted_list_names_the_secret_only_by_its_variables_and_validates_on_the_fetchers_side() -> None:
    body = fetcher.wanted_list([wanted(), wanted(adapter="plain", served_name="plain", fetch=None)], "42")
    assert len(body["adapters"]) == 1, "only adapters from the store"
    entry = body["adapters"][0]
    assert entry["name"] == "sql-v1"
    assert entry["retryEpoch"] == "3-42"
    assert entry["credentials"] == serving.credentials_env_prefix(CREDS)
    assert "store-creds" not in json.dumps(body)
    parsed = FetchList.model_validate(body)  # the fetcher's own model takes it as it is
    assert parsed.adapters[0].sha256 == DIGEST


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ({"state": "Ready"}, None),
        ({"state": "Pending"}, "Fetching"),
        ({"state": "Failed", "code": "NoSuchKey", "permanent": True}, "FetchFailed"),
        ({"state": "Failed", "code": "AccessDenied", "permanent": True}, "FetchFailed"),
        ({"state": "Failed", "code": "EndpointUnreachable", "permanent": False}, "FetchRetrying"),
        ({"state": "Failed", "code": "DigestMismatch", "message": "expected sha256 a, got b",
          "permanent": True}, "LoadFailed"),
    ],
)  # fmt: skip
def test_each_fetcher_state_is_a_reason_naming_the_uri_and_the_stores_code(
    wire: dict[str, Any], reason: str | None
) -> None:
    problem = fetcher.FetchState.of({"uri": "s3://adapters/sql", **wire}).problem()
    if reason is None:
        assert problem is None
        return
    assert problem is not None
    assert problem[0] == reason
    assert "s3://adapters/sql" in problem[1]
    if "code" in wire:
        assert wire["code"] in problem[1]
    assert (reason in resolution.TERMINAL_REASONS) == (reason in {"FetchFailed", "LoadFailed"})


# ---- the fetcher's cache budget ----------------------------------------------------------------------


def put(cache: Cache, digest: str, size: int, age_s: float, name: str | None = None) -> Path:
    folder = cache.objects / digest
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * size)
    (folder / "loraplane-manifest.json").write_text("{}")
    if name is not None:
        (cache.root / name).symlink_to(Path(".objects") / digest)
    stamp = 1_000_000 - age_s
    os.utime(folder, (stamp, stamp))
    return folder


def test_the_cache_evicts_unwanted_adapters_oldest_first_and_only_as_much_as_needed(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=10_000)
    wanted_one = put(cache, "a" * 64, 3000, age_s=500, name="sql")
    oldest = put(cache, "b" * 64, 3000, age_s=400)
    newer = put(cache, "c" * 64, 3000, age_s=100)
    cache.make_room(3000, "s3://x/y")
    assert not oldest.exists(), "the oldest unwanted one goes first"
    assert newer.exists(), "only as much as needed"
    assert wanted_one.exists(), "a wanted adapter is never evicted, however old"
    with pytest.raises(PermanentStoreError) as full:
        cache.make_room(8000, "s3://x/y")
    assert full.value.code == "CacheFull"
    assert not newer.exists()


def test_without_a_budget_unwanted_adapters_go_at_once_and_names_always_do(tmp_path: Path) -> None:
    unbounded = Cache(tmp_path / "a")
    put(unbounded, "a" * 64, 10, 0, name="sql")
    put(unbounded, "b" * 64, 10, 0, name="chat")
    unbounded.evict({"sql"})
    assert unbounded.names() == ["sql"]
    assert sorted(p.name for p in unbounded.objects.iterdir()) == ["a" * 64]
    bounded = Cache(tmp_path / "b", max_bytes=1000)
    put(bounded, "a" * 64, 10, 0, name="sql")
    put(bounded, "b" * 64, 10, 0, name="chat")
    bounded.evict({"sql"})
    assert bounded.names() == ["sql"], "vLLM's resolver never finds an unwanted name"
    assert len(list(bounded.objects.iterdir())) == 2, "kept while it fits: a rollback needs no fetch"


def test_an_entry_whose_secret_gave_no_values_fails_for_good_naming_the_uri(tmp_path: Path) -> None:
    states = Fetcher(tmp_path, environ={}).sync(
        FetchList(adapters=[WantedAdapter(name="sql", uri="s3://adapters/sql", credentials="LORAPLANE_S3_X")])
    )
    state = states["sql"]
    assert (state.state, state.code, state.permanent) == ("Failed", "CredentialsMissing", True)
    assert state.uri == "s3://adapters/sql"
