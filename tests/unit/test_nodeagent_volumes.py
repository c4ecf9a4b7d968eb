"""Volume files (ConfigMap, Secret, downward API, projected token) and each container's mount plan."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest

from loraplane_devcluster.nodeagent.env import PodNetwork
from loraplane_devcluster.nodeagent.volumes import (
    FileSpec,
    Mount,
    PreparedVolume,
    VolumeContext,
    VolumeError,
    container_mounts,
    hosts_file_content,
    keyed_files,
    prepare_volumes,
    write_files,
)

NETWORK = PodNetwork("127.0.1.3", "127.0.0.1")
POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ml", "uid": "u", "labels": {"a": "b"}},
    "spec": {"serviceAccountName": "worker", "containers": [{"name": "main"}]},
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_all_keys_or_the_listed_items_with_their_modes() -> None:
    values = {"a": b"1", "b": b"2"}
    assert keyed_files(values, None, None, "cm", optional=False) == [
        FileSpec("a", b"1", 0o644),
        FileSpec("b", b"2", 0o644),
    ]
    items: list[dict[str, Any]] = [
        {"key": "b", "path": "conf/b.txt", "mode": 0o600},
        {"key": "a", "path": "a.txt"},
    ]
    assert keyed_files(values, items, 0o440, "cm", optional=False) == [
        FileSpec("conf/b.txt", b"2", 0o600),
        FileSpec("a.txt", b"1", 0o440),
    ]


def test_items_naming_missing_keys_fail_unless_optional() -> None:
    with pytest.raises(VolumeError, match="no key 'c'"):
        keyed_files({"a": b"1"}, [{"key": "c", "path": "c"}], None, "cm", optional=False)
    assert keyed_files({"a": b"1"}, [{"key": "c", "path": "c"}], None, "cm", optional=True) == []


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b"])
def test_item_paths_cannot_leave_the_volume(path: str) -> None:
    with pytest.raises(VolumeError, match="must be relative"):
        keyed_files({"a": b"1"}, [{"key": "a", "path": path}], None, "cm", optional=False)


def context(tokens: list[tuple[str, list[str], int]]) -> VolumeContext:
    config_maps = {
        "kube-root-ca.crt": {"data": {"ca.crt": "CA PEM"}},
        "settings": {"data": {"mode": "fast"}, "binaryData": {"blob": b64(b"\x00\x01")}},
    }
    secrets = {"creds": {"data": {"token": b64(b"s3cret")}}}

    def token(account: str, audiences: list[str], expiration: int) -> str:
        tokens.append((account, audiences, expiration))
        return "jwt-for-" + account

    def claim(name: str) -> str:
        raise VolumeError(f'persistentvolumeclaim "{name}" is not bound yet')

    return VolumeContext(config_maps.get, secrets.get, claim, token, NETWORK, {"cpu": "16"})


def with_volumes(*volumes: dict[str, Any]) -> dict[str, Any]:
    return {**POD, "spec": {**POD["spec"], "volumes": list(volumes)}}


def test_the_service_account_volume_holds_token_ca_and_namespace(tmp_path: Path) -> None:
    tokens: list[tuple[str, list[str], int]] = []
    api_access = {
        "name": "kube-api-access",
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                    }
                },
            ],
        },
    }
    volumes = prepare_volumes(with_volumes(api_access), tmp_path, context(tokens))
    folder = volumes["kube-api-access"].path
    assert volumes["kube-api-access"].read_only
    assert (folder / "token").read_text() == "jwt-for-worker"
    assert (folder / "ca.crt").read_text() == "CA PEM"
    assert (folder / "namespace").read_text() == "ml"
    assert tokens == [("worker", [], 3607)]


def test_config_map_secret_empty_dir_and_downward_api_volumes(tmp_path: Path) -> None:
    volumes = prepare_volumes(
        with_volumes(
            {"name": "cm", "configMap": {"name": "settings", "defaultMode": 0o600}},
            {
                "name": "sec",
                "secret": {"secretName": "creds", "items": [{"key": "token", "path": "t/token"}]},
            },
            {"name": "scratch", "emptyDir": {}},
            {
                "name": "info",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
            },
            {"name": "maybe", "secret": {"secretName": "absent", "optional": True}},
        ),
        tmp_path,
        context([]),
    )
    cm = volumes["cm"].path
    assert (cm / "mode").read_text() == "fast"
    assert (cm / "blob").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE((cm / "mode").stat().st_mode) == 0o600
    assert (volumes["sec"].path / "t" / "token").read_text() == "s3cret"
    assert volumes["scratch"].path.is_dir()
    assert not volumes["scratch"].read_only
    assert (volumes["info"].path / "labels").read_text() == 'a="b"'
    assert list(volumes["maybe"].path.iterdir()) == []


def test_missing_objects_and_unbound_claims_are_retryable_volume_errors(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match='configMap "nope" not found'):
        prepare_volumes(with_volumes({"name": "v", "configMap": {"name": "nope"}}), tmp_path, context([]))
    with pytest.raises(VolumeError, match="not bound yet"):
        prepare_volumes(
            with_volumes({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}), tmp_path, context([])
        )
    with pytest.raises(VolumeError, match="not supported"):
        prepare_volumes(
            with_volumes({"name": "v", "nfs": {"server": "x", "path": "/"}}), tmp_path, context([])
        )


def test_write_files_replaces_content_and_sets_modes(tmp_path: Path) -> None:
    write_files(tmp_path, [FileSpec("a/b", b"one", 0o640)])
    write_files(tmp_path, [FileSpec("a/b", b"two", 0o644)])
    assert (tmp_path / "a" / "b").read_bytes() == b"two"
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o644
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]  # no temporary files left


POD_TMP = Path("/run/pods/p/tmp")
HOSTS = Path("/run/pods/p/etc-hosts")
MESSAGE = Path("/run/pods/p/containers/main/termination-log")


def mounts_for(
    container: dict[str, Any], volumes: dict[str, PreparedVolume], env: dict[str, str] | None = None
) -> list[Mount]:
    return container_mounts(
        container, volumes, env or {}, pod_tmp=POD_TMP, hosts_file=HOSTS, termination_log=MESSAGE
    )


def test_mount_plan_orders_parents_first_and_adds_tmp_hosts_and_termination_log() -> None:
    volumes = {
        "data": PreparedVolume("data", Path("/pv/1")),
        "cfg": PreparedVolume("cfg", Path("/run/cfg"), read_only=True),
    }
    container = {
        "name": "main",
        "volumeMounts": [
            {"name": "data", "mountPath": "/tmp/data/", "subPath": "runs"},
            {"name": "cfg", "mountPath": "/etc/app"},
            {"name": "data", "mountPath": "/models", "readOnly": True},
        ],
    }
    mounts = mounts_for(container, volumes)
    assert [m.target for m in mounts].index("/tmp") < [m.target for m in mounts].index("/tmp/data")
    by_target = {m.target: m for m in mounts}
    assert by_target["/tmp/data"] == Mount("/pv/1/runs", "/tmp/data", read_only=False, create_source=True)
    assert by_target["/etc/app"].read_only  # ConfigMap volumes are always read-only
    assert by_target["/models"].read_only
    assert by_target["/tmp"].source == str(POD_TMP)
    assert by_target["/etc/hosts"].source == str(HOSTS)
    assert by_target["/dev/termination-log"].source == str(MESSAGE)


def test_a_volume_on_tmp_replaces_the_private_tmp_and_custom_message_paths_are_honoured() -> None:
    volumes = {"tmp": PreparedVolume("tmp", Path("/run/pods/p/volumes/tmp"))}
    container = {
        "name": "main",
        "terminationMessagePath": "/tmp/result.json",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    mounts = mounts_for(container, volumes)
    tmp_mounts = [m for m in mounts if m.target == "/tmp"]
    assert tmp_mounts == [Mount("/run/pods/p/volumes/tmp", "/tmp")]
    assert mounts[-1] == Mount(str(MESSAGE), "/tmp/result.json")


def test_sub_path_expr_expands_with_the_container_env() -> None:
    volumes = {"out": PreparedVolume("out", Path("/pv/out"))}
    container = {
        "name": "main",
        "volumeMounts": [{"name": "out", "mountPath": "/out", "subPathExpr": "$(POD_NAME)"}],
    }
    mounts = mounts_for(container, volumes, {"POD_NAME": "trainer-0"})
    assert Mount("/pv/out/trainer-0", "/out", create_source=True) in mounts


def test_a_mount_of_an_unknown_volume_is_an_error() -> None:
    with pytest.raises(VolumeError, match="names no volume"):
        mounts_for({"name": "main", "volumeMounts": [{"name": "ghost", "mountPath": "/x"}]}, {})


def test_hosts_file_maps_the_pod_name_to_its_address() -> None:
    content = hosts_file_content("127.0.1.4", "web-0")
    assert "127.0.1.4\tweb-0" in content
    assert "127.0.0.1\tlocalhost" in content


def test_a_checkout_under_tmp_stays_visible_under_the_pods_private_tmp(tmp_path) -> None:
    """A CI clone in /tmp/x: the pod's own /tmp must not hide the code the image map runs."""
    from loraplane_devcluster.nodeagent.volumes import container_mounts  # noqa: PLC0415

    mounts = container_mounts(
        {"name": "c"}, {}, {}, pod_tmp=tmp_path / "tmp", hosts_file=tmp_path / "hosts",
        termination_log=tmp_path / "log", host_paths=(Path("/tmp/ci-clone"), Path("/root/.venv")),
    )  # fmt: skip
    targets = [m.target for m in mounts]
    assert targets.index("/tmp") < targets.index("/tmp/ci-clone"), "parents before children"
    [kept] = [m for m in mounts if m.target == "/tmp/ci-clone"]
    assert (kept.source, kept.read_only) == ("/tmp/ci-clone", True)
    assert "/root/.venv" not in targets, "paths outside /tmp need no mount"
