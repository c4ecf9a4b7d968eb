"""Pure functions over vLLM Deployments: enabling LoRA, the merged `--lora-modules`, paths through the
Deployment's own mounts, noticing removed additions, and cleanup."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from loraplane.builders import serving
from loraplane.builders.serving import merged
from manifests import EXAMPLES

SETTINGS = serving.LoraSettings(max_loras=4, max_cpu_loras=8)


def example() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((EXAMPLES / "tiny-cpu" / "vllm-deployment.yaml").read_text()))
    deployment = docs[0]
    deployment["metadata"]["resourceVersion"] = "7"
    return dict(deployment)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def enabled(deployment: dict[str, Any], rank: int | None = None) -> dict[str, Any]:
    patch = serving.enable_lora_patch(deployment, SETTINGS, rank)
    assert patch is not None
    return merged(deployment, patch)


@pytest.mark.parametrize(
    ("rank", "ceiling"), [(1, 1), (4, 8), (8, 8), (12, 16), (16, 16), (300, 320), (512, 512)]
)
def test_max_lora_rank_is_the_smallest_value_vllm_accepts(rank: int, ceiling: int) -> None:
    assert serving.max_lora_rank_for(rank) == ceiling


def test_a_rank_above_512_has_no_ceiling() -> None:
    with pytest.raises(ValueError, match="512"):
        serving.max_lora_rank_for(513)


def test_enabling_lora_keeps_every_user_argument_and_adds_flags_env_and_gate() -> None:
    before = example()
    after = enabled(before)
    args = container(after)["args"]
    assert args[: len(container(before)["args"])] == container(before)["args"]
    assert args[len(container(before)["args"]) :] == [
        "--enable-lora",
        "--max-loras",
        "4",
        "--max-cpu-loras",
        "8",
    ]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container(after)["env"]
    assert after["spec"]["template"]["spec"]["readinessGates"] == [{"conditionType": serving.GATE}]
    assert after["metadata"]["resourceVersion"] == "7", "written against the version it was read at"
    assert serving.lora_state(after).missing(8) == []
    assert serving.enable_lora_patch(after, SETTINGS, 8) is None, "enabled once: nothing more to change"


def test_a_rank_above_the_servers_ceiling_raises_max_lora_rank_to_an_allowed_value() -> None:
    deployment = example()
    container(deployment)["args"].extend(["--max-lora-rank", "8"])
    deployment["spec"]["template"]["spec"]["containers"][0]["args"] += ["--max-lora-rank", "8"]
    after = enabled(deployment, rank=24)
    args = container(after)["args"]
    assert serving.flag_values(args, "--max-lora-rank") == ["32"]
    assert args.count("--max-lora-rank") == 1
    record = json.loads(after["metadata"]["annotations"][serving.SETTINGS_ANNOTATION])
    assert record["flags"]["--max-lora-rank"] == "8", "the user's value is kept for cleanup"


def test_a_rank_within_the_default_ceiling_adds_no_max_lora_rank_flag() -> None:
    assert "--max-lora-rank" not in container(enabled(example(), rank=16))["args"]


def test_flags_in_equals_form_are_read_and_replaced_in_place() -> None:
    args = ["--model", "m", "--max-lora-rank=8", "--port", "8000"]
    assert serving.max_lora_rank_of(args) == 8
    assert serving.with_flag(args, "--max-lora-rank", ["64"]) == [
        "--model",
        "m",
        "--max-lora-rank",
        "64",
        "--port",
        "8000",
    ]
    assert serving.api_port({"args": args}) == 8000


def test_someone_elses_apply_that_drops_the_additions_is_noticed() -> None:
    after = enabled(example())
    assert serving.additions_removed(after) == []
    reverted = copy.deepcopy(after)
    reverted["spec"]["template"] = example()["spec"]["template"]
    removed = serving.additions_removed(reverted)
    assert "--enable-lora" in removed
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in removed
    assert any(serving.GATE in r for r in removed)


def test_static_mode_keeps_one_merged_lora_modules_with_the_users_entries() -> None:
    args = ["--model", "m", "--lora-modules", "mine=/a", "--port", "8000", "--lora-modules", "also=/b"]
    ours = [serving.StaticModule("z", "/z", "m"), serving.StaticModule("y", "/y", "m")]
    result = serving.static_args(args, ours, [])
    assert result.count("--lora-modules") == 1
    values = serving.flag_values(result, "--lora-modules", multi=True)
    assert values is not None
    assert values[:2] == ["mine=/a", "also=/b"]
    assert [json.loads(v)["name"] for v in values[2:]] == ["y", "z"]
    assert json.loads(values[2]) == {"name": "y", "path": "/y", "base_model_name": "m"}
    assert "--port" in result
    assert "8000" in result
    # Removing ours leaves the user's entries; removing everything drops the flag.
    assert serving.flag_values(serving.static_args(result, [], ["y", "z"]), "--lora-modules", multi=True) == [
        "mine=/a",
        "also=/b",
    ]
    assert "--lora-modules" not in serving.static_args(["--lora-modules", "x=/x"], [], ["x"])


def test_static_patch_records_its_names_and_enables_lora() -> None:
    deployment = example()
    patch = serving.static_patch(deployment, [serving.StaticModule("a", "/models/a", "tiny-llama")])
    assert patch is not None
    after = merged(deployment, patch)
    args = container(after)["args"]
    assert "--enable-lora" in args
    assert serving.module_paths(args) == {"a": "/models/a"}
    assert serving.managed_static_names(after) == ["a"]
    assert serving.static_patch(after, [serving.StaticModule("a", "/models/a", "tiny-llama")]) is None


@pytest.mark.parametrize(
    ("mount", "claim_path", "expected"),
    [
        ({"mountPath": "/models"}, "adapters/x", "/models/adapters/x"),
        ({"mountPath": "/models/"}, "", "/models"),
        ({"mountPath": "/a", "subPath": "adapters"}, "adapters/x", "/a/x"),
        ({"mountPath": "/a", "subPath": "adapters"}, "data/x", None),
    ],
)
def test_paths_come_from_the_deployments_own_mounts(
    mount: dict[str, Any], claim_path: str, expected: str | None
) -> None:
    deployment = example()
    deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "tiny", **mount}]
    assert serving.path_in_deployment(deployment, "loraplane-tiny", claim_path) == expected


def test_a_claim_the_deployment_does_not_mount_has_no_path() -> None:
    assert serving.path_in_deployment(example(), "other-claim", "adapters/x") is None


def test_the_vllm_container_is_found_among_sidecars() -> None:
    spec = {
        "containers": [
            {"name": "proxy", "image": "envoy"},
            {"name": "server", "image": "vllm/vllm-openai:v1"},
        ]
    }
    assert serving.container_index(spec) == 1
    assert serving.container_index(spec, {serving.CONTAINER_ANNOTATION: "proxy"}) == 0
    assert (
        serving.container_index({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]})
        is None
    )


def test_cleanup_restores_the_users_template() -> None:
    deployment = example()
    deployment["spec"]["template"]["spec"]["containers"][0]["args"] += ["--max-lora-rank", "8"]
    original = copy.deepcopy(deployment["spec"]["template"])
    after = enabled(deployment, rank=32)
    static = serving.static_patch(after, [serving.StaticModule("s", "/models/s", "tiny-llama")])
    assert static is not None
    after = merged(after, static)
    patch = serving.cleanup_patch(after)
    assert patch is not None
    restored = merged(after, patch)
    assert restored["spec"]["template"]["spec"]["containers"] == original["spec"]["containers"]
    assert restored["spec"]["template"]["spec"].get("readinessGates") == []
    assert serving.SETTINGS_ANNOTATION not in restored["metadata"]["annotations"]
    assert serving.cleanup_patch(restored) is None


def test_cleanup_keeps_what_the_user_had_set_already() -> None:
    deployment = example()
    deployment["spec"]["template"]["spec"]["containers"][0]["args"].append("--enable-lora")
    after = enabled(deployment)
    patch = serving.cleanup_patch(after)
    assert patch is not None
    assert "--enable-lora" in container(merged(after, patch))["args"]


def test_cleanup_takes_out_the_enable_lora_that_static_mode_added() -> None:
    deployment = example()
    original = copy.deepcopy(container(deployment))
    static = serving.static_patch(deployment, [serving.StaticModule("s", "/models/s", "tiny-llama")])
    assert static is not None
    after = merged(deployment, static)
    assert "--enable-lora" in container(after)["args"]
    patch = serving.cleanup_patch(after)
    assert patch is not None
    restored = merged(after, patch)
    assert container(restored) == original
    assert serving.SETTINGS_ANNOTATION not in restored["metadata"]["annotations"]
    # HotLoad enabled later on the same Deployment: still the user never had --enable-lora.
    both = enabled(after)
    assert "--enable-lora" not in container(merged(both, serving.cleanup_patch(both) or {}))["args"]


@pytest.mark.parametrize(
    "users",
    [
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "False"},
        {
            "name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
            "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}},
        },
    ],
)
def test_cleanup_puts_back_the_users_own_runtime_variable_where_it_was(users: dict[str, Any]) -> None:
    deployment = example()
    deployment["spec"]["template"]["spec"]["containers"][0]["env"].insert(1, users)
    original = copy.deepcopy(container(deployment))
    after = enabled(deployment)
    env = container(after)["env"]
    assert env[1] == {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}, "replaced in place"
    assert len(env) == len(original["env"])
    raised = enabled(after, rank=64)  # a second change keeps what the user had
    restored = merged(raised, serving.cleanup_patch(raised) or {})
    assert container(restored)["env"] == original["env"]


def test_opt_in_is_the_annotation() -> None:
    assert serving.is_opted_in(example())
    plain = example()
    plain["metadata"]["annotations"] = {}
    assert not serving.is_opted_in(plain)


@pytest.mark.parametrize(
    ("value", "named"),
    [("vllm-key/api-key", ("vllm-key", "api-key")), ("vllm-key", ("vllm-key", "token")), (None, None)],
)
def test_the_api_key_annotation_names_a_secret_and_a_key(value: str | None, named: Any) -> None:
    annotations = {} if value is None else {"loraplane.io/api-key-secret": value}
    assert serving.api_key_annotation({"metadata": {"annotations": annotations}}) == named


@pytest.mark.parametrize("value", ["", "Vllm_Key/x", "a/b/c", "/key"])
def test_a_malformed_api_key_annotation_says_the_form_it_wants(value: str) -> None:
    with pytest.raises(ValueError, match="must be <secret>/<key>"):
        serving.api_key_annotation({"metadata": {"annotations": {"loraplane.io/api-key-secret": value}}})


def lora_ready_example() -> dict[str, Any]:
    path = EXAMPLES / "tiny-cpu" / "vllm-deployment-lora.yaml"
    deployment = next(d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "Deployment")
    deployment["metadata"]["resourceVersion"] = "7"
    return dict(deployment)


@pytest.mark.parametrize("rank", [None, 8, 16])
def test_the_demos_deployment_starts_as_enabled_lora_would_leave_it_so_nothing_restarts(
    rank: int | None,
) -> None:
    ready = lora_ready_example()
    assert serving.lora_state(ready).missing(rank) == []
    assert serving.enable_lora_patch(ready, SETTINGS, rank) is None, "the operator would restart it"
    assert serving.additions_removed(ready) == []


def test_the_demos_deployment_is_the_opt_in_example_with_what_enabling_adds() -> None:
    ready, by_operator = lora_ready_example(), enabled(example())
    ready_container, operator_container = container(ready), container(by_operator)
    # The one difference: the ceiling the operator leaves at vLLM's default is written out.
    assert serving.flag_value(ready_container["args"], serving.MAX_LORA_RANK) == str(
        serving.VLLM_DEFAULT_MAX_LORA_RANK
    )
    ready_container["args"] = serving.without_flag(ready_container["args"], serving.MAX_LORA_RANK)
    assert ready_container == operator_container
    template, operator_template = ready["spec"]["template"]["spec"], by_operator["spec"]["template"]["spec"]
    assert template["readinessGates"] == operator_template["readinessGates"]
