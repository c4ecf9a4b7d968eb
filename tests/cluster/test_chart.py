"""The Helm chart with a real helm and a real API server: lint, values schema, install, upgrade of a
CRD, uninstall, and least-privilege RBAC checked with the operator's own ServiceAccount token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from loraplane.api.storage import S3Connection
from loraplane.settings import Settings
from loraplane_devcluster.testing import Kube, wait_until
from loraplane_fixtures import CHART, Release

pytestmark = pytest.mark.cluster

KUBE_VERSION = "1.36.3"


def render(kube: Kube, *values: str) -> list[dict]:
    args = ["template", "t", str(CHART), "--namespace", "lp", "--kube-version", KUBE_VERSION]
    for value in values:
        args += ["--set", value]
    return [d for d in yaml.safe_load_all(kube.helm(*args).stdout) if d]


def test_lint_is_clean(kube: Kube) -> None:
    result = kube.helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in result.stdout


def test_operator_runs_hardened(kube: Kube) -> None:
    [deployment] = [d for d in render(kube) if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert "--standalone" in container["command"]
    assert any(a.startswith("--liveness=http://$(POD_IP):") for a in container["args"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def is_hook(doc: dict) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def test_watch_namespaces_narrow_rbac_to_roles(kube: Kube) -> None:
    docs = [d for d in render(kube, "watchNamespaces={team-a,team-b}") if not is_hook(d)]
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    # Only discovery (CRDs, namespaces) stays cluster-wide.
    assert [r["metadata"]["name"] for r in cluster_roles] == ["t-loraplane-discovery"]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args
    assert "--all-namespaces" not in args


def test_api_key_secrets_are_read_only_through_roles_in_the_listed_namespaces(kube: Kube) -> None:
    docs = render(kube, "serving.apiKeySecrets.namespaces={team-a}", "serving.apiKeySecrets.names={vllm-key}")
    for doc in docs:
        if doc["kind"] == "ClusterRole":
            assert not [r for r in doc["rules"] if "secrets" in r["resources"]], doc["metadata"]["name"]
    named = [d for d in docs if d["metadata"]["name"] == "t-loraplane-api-keys"]
    [role] = [d for d in named if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "team-a"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["vllm-key"]}
    ]
    [binding] = [d for d in named if d["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["name"] == "t-loraplane"
    assert not [d for d in render(kube) if "secrets" in json.dumps(d.get("rules", []))], "none by default"
    result = kube.helm(
        "template", "t", str(CHART), "--kube-version", KUBE_VERSION, "--set", "watchNamespaces={team-a}",
        "--set", "serving.apiKeySecrets.namespaces={team-b}", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "team-b is not in watchNamespaces" in result.stderr


def test_exclude_namespaces_leave_another_releases_namespaces_alone(kube: Kube) -> None:
    docs = render(kube, "excludeNamespaces={own-*,team-b}")
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    # kopf's namespace pattern: every namespace but those globs (watched one by one).
    assert "--namespace=*,!own-*,!team-b" in args
    assert "--all-namespaces" not in args
    [job] = [d for d in docs if d["kind"] == "Job"]
    job_args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in job_args if a.startswith("--exclude-namespace=")] == [
        "--exclude-namespace=own-*",
        "--exclude-namespace=team-b",
    ]
    # Listed namespaces win: nothing to exclude from.
    docs = render(kube, "excludeNamespaces={own-*}", "watchNamespaces={team-a}")
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    assert [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            if a.startswith("--namespace")] == ["--namespace=team-a"]  # fmt: skip
    [job] = [d for d in docs if d["kind"] == "Job"]
    assert not [a for a in job["spec"]["template"]["spec"]["containers"][0]["args"] if "exclude" in a]


def test_the_cleanup_pod_is_not_taken_for_an_operator_pod(kube: Kube) -> None:
    """The hook waits until the operator's pods are gone, by the operator Deployment's selector."""
    docs = render(kube)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    [job] = [d for d in docs if d["kind"] == "Job"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert any(labels.get(key) != value for key, value in selector.items())
    [service] = [d for d in docs if d["kind"] == "Service"]
    assert any(labels.get(key) != value for key, value in service["spec"]["selector"].items())
    [role] = [
        d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "t-loraplane-cleanup-operator"
    ]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]} in role["rules"]


def test_uninstall_cleanup_hook_runs_under_its_own_account(kube: Kube) -> None:
    hooks = [d for d in render(kube) if is_hook(d)]
    [job] = [d for d in hooks if d["kind"] == "Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] != "t-loraplane"
    [container] = pod["containers"]
    assert container["command"] == ["python", "-m", "loraplane.cleanup"]
    assert not [d for d in render(kube, "cleanup.enabled=false") if is_hook(d)]


def test_crds_are_kept_on_uninstall_by_default(kube: Kube) -> None:
    crds = [d for d in render(kube) if d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 2
    assert all(c["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"} for c in crds)
    assert not [d for d in render(kube, "crds.install=false") if d["kind"] == "CustomResourceDefinition"]


def operator_settings(kube: Kube, variable: str, *values: str) -> Settings:
    """The operator's settings as pydantic-settings reads `variable` from the chart's rendering."""
    [deployment] = [d for d in render(kube, *values) if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable, env[variable])
        return Settings()


def test_the_object_store_defaults_reach_the_operators_settings(kube: Kube) -> None:
    """The chart's `objectStore` is the operator's `settings.object_store`, read as pydantic-settings
    reads the variable (JSON)."""

    def setting(*values: str) -> S3Connection:
        return operator_settings(kube, "LORAPLANE_OBJECT_STORE", *values).object_store

    assert setting().model_dump(exclude_none=True) == {}
    store = setting(
        "objectStore.endpoint=http://10.0.0.5:7070", "objectStore.pathStyle=true",
        "objectStore.credentialsSecret.name=s3-creds",
    )  # fmt: skip
    assert store.endpoint == "http://10.0.0.5:7070"
    assert store.path_style is True
    assert store.credentials_secret is not None
    assert store.credentials_secret.name == "s3-creds"
    assert store.credentials_secret.secret_access_key_key == "secretAccessKey"


def test_object_workers_reach_the_operators_settings(kube: Kube) -> None:
    """`objectWorkers` is `settings.object_workers`, kopf's worker limit per kind."""

    def setting(*values: str) -> int:
        return operator_settings(kube, "LORAPLANE_OBJECT_WORKERS", *values).object_workers

    assert setting() == 300
    assert setting("objectWorkers=40") == 40


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("serving.maxLoras=0", "at '/serving/maxLoras': minimum: got 0, want 1"),
        ("objectWorkers=5", "at '/objectWorkers': minimum: got 5, want 10"),
        ("logLevel=LOUD", "at '/logLevel'"),
        ("trainig.workerImage=x", "additional properties 'trainig' not allowed"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0'"),
        ("serving.apiKeySecrets.namespaces={Team_A}", "at '/serving/apiKeySecrets/namespaces/0'"),
        ("excludeNamespaces={Team_*}", "at '/excludeNamespaces/0'"),
        ("objectStore.endpoint=https://store:9000/bucket", "at '/objectStore/endpoint'"),
        ("objectStore.credentialsSecret.key=x", "at '/objectStore/credentialsSecret'"),
    ],
)
def test_wrong_values_fail_at_install_with_a_clear_message(kube: Kube, value: str, message: str) -> None:
    result = kube.helm(
        "template", "t", str(CHART), "--kube-version", KUBE_VERSION, "--set", value, check=False
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_install_and_uninstall_a_namespaced_release(
    kube: Kube, chart_release: Release, namespace: str
) -> None:
    release = f"lp-{namespace[-6:]}"
    kube.helm(
        "install", release, str(CHART), "--namespace", namespace, "--set", "crds.install=false",
        "--set", f"watchNamespaces={{{namespace}}}", "--wait=false",
    )  # fmt: skip
    names = f"{release}-loraplane"
    assert kube.kubectl("get", "role", names, "-n", namespace, check=False).returncode == 0
    assert kube.kubectl("get", "deployment", names, "-n", namespace, check=False).returncode == 0
    notes = kube.helm("get", "notes", release, "--namespace", namespace).stdout
    assert "kubectl get lora" in notes

    kube.helm("uninstall", release, "--namespace", namespace, "--wait")
    for kind, scope in (("deployment", ["-n", namespace]), ("role", ["-n", namespace]), ("clusterrole", [])):
        name = names if kind != "clusterrole" else f"{names}-discovery"
        assert kube.kubectl("get", kind, name, *scope, check=False).returncode != 0, f"{kind} {name} left"
    # The session release's CRDs are untouched.
    assert kube.kubectl("get", "crd", "loratrainingjobs.loraplane.io", check=False).returncode == 0


def test_upgrade_applies_a_changed_crd(kube: Kube, chart_release: Release, tmp_path: Path) -> None:
    changed = tmp_path / "loraplane"
    shutil.copytree(CHART, changed)
    crd_file = changed / "files" / "crds" / "loraplane.io_loraadapters.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    columns.insert(0, {"name": "Served", "type": "string", "jsonPath": ".spec.servedModelName"})
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))

    def printer_columns() -> list[str]:
        got = json.loads(kube.kubectl("get", "crd", "loraadapters.loraplane.io", "-o", "json").stdout)
        return [c["name"] for c in got["spec"]["versions"][0]["additionalPrinterColumns"]]

    upgrade = ("upgrade", chart_release.name, "--namespace", chart_release.namespace, "--reuse-values",
               "--wait=false")  # fmt: skip
    try:
        kube.helm(*upgrade[:2], str(changed), *upgrade[2:])
        assert printer_columns()[0] == "Served"
    finally:
        kube.helm(*upgrade[:2], str(CHART), *upgrade[2:])
    assert "Served" not in printer_columns()


# --- RBAC, as the operator's ServiceAccount -------------------------------------------------------

ALLOWED = [
    ("watch", "loratrainingjobs.loraplane.io", []),
    ("patch", "loratrainingjobs.loraplane.io", ["--subresource=status"]),
    ("update", "loraadapters.loraplane.io", ["--subresource=finalizers"]),
    ("create", "loraadapters.loraplane.io", []),
    ("create", "jobs.batch", []),
    ("create", "configmaps", []),
    ("create", "services", []),
    ("list", "workloads.kueue.x-k8s.io", []),
    ("watch", "workloads.kueue.x-k8s.io", []),
    ("patch", "pods", ["--subresource=status"]),
    ("patch", "deployments.apps", []),
    ("create", "events", []),
    ("create", "events.events.k8s.io", []),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", []),
    ("watch", "namespaces", []),
]
FORBIDDEN = [
    ("get", "secrets", []),
    ("list", "secrets", ["--all-namespaces"]),
    ("delete", "nodes", []),
    ("create", "pods", []),
    ("delete", "jobs.batch", []),
    ("patch", "jobs.batch", []),  # suspend is Kueue's
    ("patch", "workloads.kueue.x-k8s.io", []),
    ("delete", "services", []),
    ("patch", "pods", []),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", []),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", []),
]


# Kinds whose CRDs the cluster may lack while this runs (Kueue's are installed by its own test):
# `kubectl auth can-i` resolves a resource through discovery and answers "no" for an unknown one,
# so these are asked with a SelfSubjectAccessReview that names the group itself.
OPTIONAL_KINDS = {"workloads.kueue.x-k8s.io": ("kueue.x-k8s.io", "workloads")}


def can_i(kube: Kube, kubeconfig: Path, namespace: str, verb: str, resource: str, extra: list[str]) -> bool:
    if resource in OPTIONAL_KINDS:
        group, plural = OPTIONAL_KINDS[resource]
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": plural,
                }
            },
        }
        answer = kube.kubectl(
            "create", "-f", "-", "-o", "json", input=json.dumps(review), kubeconfig_path=kubeconfig
        )
        return bool(json.loads(answer.stdout)["status"].get("allowed"))
    result = kube.kubectl(
        "auth", "can-i", verb, resource, "-n", namespace, *extra, kubeconfig_path=kubeconfig, check=False
    )
    return result.stdout.strip() == "yes"


@pytest.mark.parametrize(
    ("verb", "resource", "extra"), ALLOWED, ids=lambda v: v if isinstance(v, str) else ""
)
def test_operator_may_do_what_it_needs(
    kube: Kube, operator_kubeconfig: Path, namespace: str, verb: str, resource: str, extra: list[str]
) -> None:
    assert can_i(kube, operator_kubeconfig, namespace, verb, resource, extra)


@pytest.mark.parametrize(
    ("verb", "resource", "extra"), FORBIDDEN, ids=lambda v: v if isinstance(v, str) else ""
)
def test_operator_may_not_do_more(
    kube: Kube, operator_kubeconfig: Path, namespace: str, verb: str, resource: str, extra: list[str]
) -> None:
    assert not can_i(kube, operator_kubeconfig, namespace, verb, resource, extra)


def test_reading_secrets_with_the_operator_token_is_forbidden(
    kube: Kube, operator_kubeconfig: Path, namespace: str
) -> None:
    result = kube.kubectl("get", "secrets", "-n", namespace, kubeconfig_path=operator_kubeconfig, check=False)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr
    wait_until("the token to list training jobs", lambda: kube.kubectl(
        "get", "ltj", "-n", namespace, kubeconfig_path=operator_kubeconfig, check=False
    ).returncode == 0, timeout_s=10)  # fmt: skip


def test_the_operator_may_get_api_key_secrets_in_a_listed_namespace_and_list_none(
    kube: Kube, chart_release: Release, operator_kubeconfig: Path, namespace: str
) -> None:
    upgrade = ("upgrade", chart_release.name, str(CHART), "--namespace", chart_release.namespace,
               "--reuse-values", "--wait=false")  # fmt: skip
    kube.helm(*upgrade, "--set-json", f'serving.apiKeySecrets.namespaces=["{namespace}"]')
    try:
        wait_until("get on secrets in the listed namespace", lambda: can_i(
            kube, operator_kubeconfig, namespace, "get", "secrets", []
        ), timeout_s=10)  # fmt: skip
        for verb, where in [("list", namespace), ("watch", namespace), ("get", chart_release.namespace)]:
            assert not can_i(kube, operator_kubeconfig, where, verb, "secrets", []), (verb, where)
        assert not can_i(kube, operator_kubeconfig, namespace, "list", "secrets", ["--all-namespaces"])
        assert not can_i(kube, operator_kubeconfig, namespace, "get", "secrets", ["--all-namespaces"])
    finally:
        kube.helm(*upgrade, "--set-json", "serving.apiKeySecrets.namespaces=[]")
    wait_until("no get on secrets once the namespace is no longer listed", lambda: not can_i(
        kube, operator_kubeconfig, namespace, "get", "secrets", []
    ), timeout_s=10)  # fmt: skip
