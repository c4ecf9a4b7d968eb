"""Bring the local control plane up and down: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler on 127.0.0.1, then the node agent and, in its pod network, kube-proxy and CoreDNS
(:mod:`loraplane_devcluster.services`), all out of one run directory.

Run directory layout (see docs/local-cluster.md)::

    cluster.json        ports, server URL, binaries folder, start timings
    kubeconfig          admin kubeconfig (O=system:masters), certificates embedded
    kubeconfigs/        one kubeconfig per control-plane identity (kube-proxy, coredns included)
    node-network.json   the node agent's pod network (its namespace and bridge address)
    kube-proxy.yaml     kube-proxy's configuration; Corefile: CoreDNS's
    pki/                CA, serving and client certificates, service-account key pair
    etcd/               etcd's data
    logs/NAME.log       every component's stdout and stderr
    pids/NN-NAME.json   every process started, with its start time; ``down`` reads these

``up`` is idempotent: a healthy cluster in the run directory is reused; a half-dead one is stopped
and started again on the same data. Ports are chosen free on the first start and kept while free,
so an exported KUBECONFIG survives ``down``/``up``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loraplane_devcluster import binaries, kubeconfig, pki, probes, processes, services

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_STORAGE_CLASS = "standard"
NODE_AGENT_MODULE = "loraplane_devcluster.nodeagent"
# Webhook registrations of a Kueue that `kueue.install` started (see loraplane_devcluster.kueue)
KUEUE_WEBHOOK_LABEL = "loraplane.io/devcluster-kueue"
LOCALHOST = "127.0.0.1"
_PORT_RETRIES = 3
_LOG_TAIL_LINES = 30
# Components talk to 127.0.0.1 only; a proxy from the environment must never see their traffic.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class ControlPlaneError(RuntimeError):
    pass


class _PortTakenError(Exception):
    pass


def default_run_dir() -> Path:
    """$LORAPLANE_RUN_DIR, else the cache's run/cluster."""
    explicit = os.environ.get("LORAPLANE_RUN_DIR")
    return Path(explicit) if explicit else binaries.cache_dir() / "run" / "cluster"


@dataclass(frozen=True)
class Layout:
    """Where everything lives inside one run directory."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def kubeconfigs(self) -> Path:
        return self.root / "kubeconfigs"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


@dataclass
class Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0
    controller_manager: int = 0
    scheduler: int = 0


@dataclass
class Cluster:
    """A running control plane, as ``up`` left it."""

    run_dir: Path
    bin_dir: Path
    kubeconfig: Path
    server: str
    ports: Ports
    reused: bool = False
    node: bool = False
    services: bool = False  # kube-proxy and CoreDNS
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return Layout(self.run_dir)

    def processes(self) -> list[processes.ProcessRecord]:
        return processes.read_records(self.run_dir)


# ---- pure command lines ------------------------------------------------------------------------


def etcd_argv(bin_dir: Path, layout: Layout, ports: Ports) -> list[str]:
    client = f"http://{LOCALHOST}:{ports.etcd_client}"
    peer = f"http://{LOCALHOST}:{ports.etcd_peer}"
    return [
        str(bin_dir / "etcd"),
        "--name=loraplane-dev",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=loraplane-dev={peer}",
        # a dev cluster is thrown away, not recovered: skip fsync, the slowest part of etcd on a VM
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def apiserver_argv(bin_dir: Path, layout: Layout, ports: Ports, certs: pki.ClusterPki) -> list[str]:
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://{LOCALHOST}:{ports.etcd_client}",
        f"--bind-address={LOCALHOST}",
        f"--secure-port={ports.apiserver}",
        # Without both, the API server advertises the machine's outward address (or refuses to
        # start) and keeps rewriting the `kubernetes` Endpoints to it.
        f"--advertise-address={LOCALHOST}",
        "--endpoint-reconciler-type=none",
        "--authorization-mode=Node,RBAC",
        f"--client-ca-file={certs.ca.cert}",
        f"--tls-cert-file={certs.apiserver.cert}",
        f"--tls-private-key-file={certs.apiserver.key}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={certs.service_account_public_key}",
        f"--service-account-signing-key-file={certs.service_account_private_key}",
        f"--service-cluster-ip-range={pki.SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        # on 2 cores, API priority and fairness mostly adds queueing to the test traffic
        "--enable-priority-and-fairness=false",
        # how `kubectl logs/exec` would reach the node agent, should it serve the kubelet API
        f"--kubelet-client-certificate={certs.apiserver_kubelet_client.cert}",
        f"--kubelet-client-key={certs.apiserver_kubelet_client.key}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--profiling=false",
    ]


def controller_manager_argv(bin_dir: Path, layout: Layout, ports: Ports, certs: pki.ClusterPki) -> list[str]:
    config = layout.kubeconfigs / "controller-manager"
    return [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={config}",
        f"--authentication-kubeconfig={config}",
        f"--authorization-kubeconfig={config}",
        f"--bind-address={LOCALHOST}",
        f"--secure-port={ports.controller_manager}",
        f"--cert-dir={layout.pki / 'serving-controller-manager'}",
        f"--client-ca-file={certs.ca.cert}",
        # no front proxy here: without this the requestheader CA it looks up is logged as missing
        "--authentication-skip-lookup=true",
        f"--root-ca-file={certs.ca.cert}",
        f"--service-account-private-key-file={certs.service_account_private_key}",
        # each controller runs as its own ServiceAccount, so RBAC is exercised as in production
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={certs.ca.cert}",
        f"--cluster-signing-key-file={certs.ca.key}",
        f"--service-cluster-ip-range={pki.SERVICE_CLUSTER_IP_RANGE}",
        "--cluster-name=loraplane-dev",
        "--leader-elect=false",
        # the controllers that need a cloud skip themselves when no cloud provider is set
        "--controllers=*",
        # PVCs of the default StorageClass bind to host-path volumes (under /tmp/hostpath_pv)
        "--enable-hostpath-provisioner=true",
        # its default is under /usr/libexec, which it would create
        f"--flex-volume-plugin-dir={layout.root / 'flexvolume'}",
        "--profiling=false",
    ]


def scheduler_argv(bin_dir: Path, layout: Layout, ports: Ports, certs: pki.ClusterPki) -> list[str]:
    config = layout.kubeconfigs / "scheduler"
    return [
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={config}",
        f"--authentication-kubeconfig={config}",
        f"--authorization-kubeconfig={config}",
        f"--bind-address={LOCALHOST}",
        f"--secure-port={ports.scheduler}",
        f"--cert-dir={layout.pki / 'serving-scheduler'}",
        f"--client-ca-file={certs.ca.cert}",
        "--authentication-skip-lookup=true",
        "--leader-elect=false",
        "--profiling=false",
    ]


# ---- helpers -----------------------------------------------------------------------------------


def _free_port(preferred: int = 0) -> int:
    """``preferred`` when it can still be bound on 127.0.0.1, else a port the kernel picks."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # as the Go servers do, so a port whose old connections sit in TIME_WAIT counts as free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOCALHOST, candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise ControlPlaneError("no free port on 127.0.0.1")


def _component_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _PROXY_VARIABLES}


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log (of its latest start only)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    latest = text[text.rfind("==== ") :] if "==== " in text else text
    return "\n".join(latest.splitlines()[-lines:])


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One ``up``/``down`` per run directory at a time."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with layout.lock.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read_state(layout: Layout) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(layout.state.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return state


def _write_state(layout: Layout, state: dict[str, Any]) -> None:
    tmp = layout.state.with_name(f".{layout.state.name}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(layout.state)


class _Api:
    """The few admin requests ``up`` makes, over the standard library."""

    def __init__(self, server: str, certs: pki.ClusterPki) -> None:
        self.server = server
        self.tls = probes.client_tls(certs.ca.cert, certs.admin.cert, certs.admin.key)

    def get(self, path: str) -> probes.Response | None:
        return probes.request(self.server + path, context=self.tls)

    def create(self, path: str, body: dict[str, Any]) -> probes.Response | None:
        return probes.request(self.server + path, method="POST", body=body, context=self.tls)

    def apply(self, path: str, body: dict[str, Any]) -> None:
        """Server-side apply of ``body`` at its own ``path`` (creates or updates)."""
        url = f"{self.server}{path}?fieldManager={services.FIELD_MANAGER}&force=true"
        response = probes.request(
            url, method="PATCH", body=body, context=self.tls, content_type="application/apply-patch+yaml"
        )
        if response is None or response.status not in (200, 201):
            detail = response.body.decode(errors="replace") if response else "no answer"
            raise ControlPlaneError(f"applying {path} failed: {detail}")

    def ready(self) -> bool:
        response = self.get("/readyz")
        return response is not None and response.status == 200

    def exists(self, path: str) -> bool:
        response = self.get(path)
        return response is not None and response.status == 200

    def ready_nodes(self) -> list[str]:
        response = self.get("/api/v1/nodes")
        if response is None or response.status != 200:
            return []
        return [
            node["metadata"]["name"]
            for node in response.json().get("items", [])
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
        ]


@dataclass
class _Started:
    name: str
    popen: subprocess.Popen[bytes] | None
    record: processes.ProcessRecord
    log: Path | None
    spawned_at: float

    def exit_reason(self) -> str | None:
        """Why waiting on this component is pointless, if it is."""
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                return None
            return f"{self.name} exited with code {code}"
        if processes.is_alive(self.record):
            return None
        return f"{self.name} (pid {self.record.pid}) is gone"

    def failure(self, message: str) -> ControlPlaneError:
        tail = log_tail(self.log) if self.log else "(no log recorded)"
        return ControlPlaneError(f"{message}\n--- last lines of {self.log}:\n{tail}")

    def lost_its_port(self) -> bool:
        return self.log is not None and "address already in use" in log_tail(self.log, 200)


class _Bringup:
    """One start of the control plane into a run directory, component by component.

    Every process is recorded as soon as it is spawned, so ``up`` can stop them all on failure.
    """

    def __init__(
        self,
        layout: Layout,
        bin_dir: Path,
        previous_ports: Ports,
        *,
        timeout_s: float,
        die_with_parent: bool,
        report: Callable[[str], None],
    ) -> None:
        self.layout = layout
        self.bin_dir = bin_dir
        self.previous = previous_ports
        self.ports = Ports()
        self.timeout_s = timeout_s
        self.die_with_parent = die_with_parent
        self.report = report
        self.env = _component_env()
        self.timings: dict[str, float] = {}
        self.certs = pki.cluster_pki(layout.pki)

    # -- mechanics

    def port(self, name: str) -> int:
        """The port this run directory used before when it is still free (a stable KUBECONFIG),
        else a fresh one; a retry after a clash always takes a fresh one."""
        current = getattr(self.ports, name)
        chosen = _free_port(0 if current else getattr(self.previous, name))
        setattr(self.ports, name, chosen)
        return chosen

    def spawn(self, name: str, argv: list[str]) -> _Started:
        log = self.layout.log(name)
        popen = processes.spawn(
            argv, log, env=self.env, cwd=self.layout.root, die_with_parent=self.die_with_parent
        )
        record = processes.record(self.layout.root, name, popen.pid, argv, log)
        return _Started(name, popen, record, log, time.monotonic())

    def wait(self, started: _Started, what: str, condition: Callable[[], bool]) -> float:
        try:
            probes.wait_for(what, condition, self.timeout_s, still_possible=started.exit_reason)
        except probes.WaitTimeoutError as error:
            if started.lost_its_port():
                raise _PortTakenError(started.name) from error
            raise started.failure(str(error)) from error
        return time.monotonic() - started.spawned_at

    def launch(self, name: str, attempt: Callable[[], tuple[_Started, float]]) -> _Started:
        """Run ``attempt`` (spawn + wait), again on fresh ports if a port was taken meanwhile:
        ports are picked free but handed over by number, so another process can take one first."""
        for remaining in range(_PORT_RETRIES - 1, -1, -1):
            try:
                started, seconds = attempt()
            except _PortTakenError:
                if remaining == 0:
                    raise
                self.report(f"{name}: a port was taken meanwhile, retrying on another")
                entry = next(r for r in reversed(processes.read_records(self.layout.root)) if r.name == name)
                processes.stop(entry, grace_s=2)
                processes.forget(self.layout.root, entry)
                continue
            self.timings[name] = seconds
            return started
        raise AssertionError("unreachable")

    # -- components

    def etcd(self) -> tuple[_Started, float]:
        self.port("etcd_client")
        self.port("etcd_peer")
        started = self.spawn("etcd", etcd_argv(self.bin_dir, self.layout, self.ports))
        url = f"http://{LOCALHOST}:{self.ports.etcd_client}/health"
        return started, self.wait(started, "etcd /health", lambda: probes.answers_ok(url))

    def apiserver(self) -> tuple[_Started, float]:
        self.port("apiserver")
        api = self.api()
        started = self.spawn(
            "kube-apiserver", apiserver_argv(self.bin_dir, self.layout, self.ports, self.certs)
        )
        return started, self.wait(started, "kube-apiserver /readyz", api.ready)

    def controller_manager(self) -> tuple[_Started, float]:
        port = self.port("controller_manager")
        argv = controller_manager_argv(self.bin_dir, self.layout, self.ports, self.certs)
        started = self.spawn("kube-controller-manager", argv)
        return started, self.wait(started, "kube-controller-manager /healthz", _healthz(port))

    def scheduler(self) -> tuple[_Started, float]:
        port = self.port("scheduler")
        argv = scheduler_argv(self.bin_dir, self.layout, self.ports, self.certs)
        started = self.spawn("kube-scheduler", argv)
        return started, self.wait(started, "kube-scheduler /healthz", _healthz(port))

    def api(self) -> _Api:
        return _Api(f"https://{LOCALHOST}:{self.ports.apiserver}", self.certs)

    # -- the whole start

    def run(self) -> Cluster:
        began = time.monotonic()
        step = time.monotonic()
        self.certs = pki.ensure_cluster_pki(self.layout.pki)
        self.timings["pki"] = time.monotonic() - step

        self.launch("etcd", self.etcd)
        self.report(f"etcd ready on {LOCALHOST}:{self.ports.etcd_client} ({self.timings['etcd']:.1f} s)")
        self.launch("kube-apiserver", self.apiserver)
        api = self.api()
        self.report(f"kube-apiserver ready at {api.server} ({self.timings['kube-apiserver']:.1f} s)")
        _write_kubeconfigs(self.layout, api.server, self.certs)
        controller_manager = self.launch("kube-controller-manager", self.controller_manager)
        self.launch("kube-scheduler", self.scheduler)
        manager, scheduler = self.timings["kube-controller-manager"], self.timings["kube-scheduler"]
        self.report(
            f"kube-controller-manager and kube-scheduler healthy ({manager:.1f} s, {scheduler:.1f} s)"
        )
        self.timings["default-serviceaccount"] = _wait_for_default_service_account(
            api, controller_manager, self.timeout_s
        )
        _ensure_default_storage_class(api)
        _remove_stale_kueue_webhooks(api)
        self.timings["control-plane"] = time.monotonic() - began
        return Cluster(self.layout.root, self.bin_dir, self.layout.kubeconfig, api.server, self.ports)


def _answers(url: str) -> Callable[[], bool]:
    return lambda: probes.answers_ok(url)


def _healthz(port: int) -> Callable[[], bool]:
    # controller-manager and scheduler serve /healthz with a self-signed certificate of their own
    return lambda: probes.answers_ok(f"https://{LOCALHOST}:{port}/healthz", probes.self_signed_tls())


# ---- up / down / status ------------------------------------------------------------------------


def _healthy(layout: Layout, state: dict[str, Any]) -> bool:
    records = processes.read_records(layout.root)
    names = {r.name for r in records}
    control_plane = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    if not state.get("server") or not control_plane <= names:
        return False
    if not all(processes.is_alive(r) for r in records):
        return False
    try:
        api = _Api(state["server"], pki.cluster_pki(layout.pki))
    except OSError:  # certificates gone: not a cluster we can talk to
        return False
    return api.ready()


def node_agent_start() -> Callable[..., int] | None:
    """``loraplane_devcluster.nodeagent.start`` when that package exists, else None."""
    if importlib.util.find_spec(NODE_AGENT_MODULE) is None:
        return None
    module = importlib.import_module(NODE_AGENT_MODULE)
    start = getattr(module, "start", None)
    return start if callable(start) else None


def up(
    run_dir: Path | None = None,
    *,
    bin_dir: Path | None = None,
    node: bool = True,
    cluster_services: bool = True,
    timeout_s: float = 90.0,
    die_with_parent: bool = False,
    report: Callable[[str], None] = lambda _message: None,
) -> Cluster:
    """Start the control plane in ``run_dir`` (or reuse the healthy one already there).

    ``cluster_services`` (with ``node``): kube-proxy and CoreDNS, so Service addresses route and
    names resolve in pods. ``die_with_parent`` ties every component to the calling thread's
    process (test fixtures: nothing outlives a killed pytest). ``timeout_s`` bounds each wait, not
    the whole start.
    """
    layout = Layout((run_dir or default_run_dir()).resolve())
    with _locked(layout):
        state = _read_state(layout)
        if _healthy(layout, state):
            report(f"reusing the running control plane in {layout.root}")
            cluster = _cluster_from_state(layout, state, reused=True)
            if node and not cluster.node:
                _start_node_agent(
                    layout, cluster, timeout_s=timeout_s, die_with_parent=die_with_parent, report=report
                )
                state["node"] = cluster.node
                _write_state(layout, state)
            if node and cluster_services and cluster.node and not state.get("services"):
                _start_cluster_services(
                    layout, cluster, timeout_s=timeout_s, die_with_parent=die_with_parent, report=report
                )
                state["services"] = cluster.services
                _write_state(layout, state)
            return cluster
        leftovers = [r for r in processes.read_records(layout.root) if processes.is_alive(r)]
        if leftovers:
            report(f"stopping {len(leftovers)} leftover process(es) of an unhealthy cluster")
        processes.stop_all(layout.root)
        try:
            return _start(
                layout,
                state,
                bin_dir=bin_dir,
                node=node,
                cluster_services=cluster_services,
                timeout_s=timeout_s,
                die_with_parent=die_with_parent,
                report=report,
            )
        except BaseException:
            processes.stop_all(layout.root)
            raise


def _cluster_from_state(layout: Layout, state: dict[str, Any], *, reused: bool) -> Cluster:
    return Cluster(
        run_dir=layout.root,
        bin_dir=Path(state["bin_dir"]),
        kubeconfig=layout.kubeconfig,
        server=state["server"],
        ports=Ports(**state["ports"]),
        reused=reused,
        node=bool(state.get("node")),
        services=bool(state.get("services")),
        timings=dict(state.get("timings", {})),
    )


def _start(
    layout: Layout,
    previous: dict[str, Any],
    *,
    bin_dir: Path | None,
    node: bool,
    cluster_services: bool,
    timeout_s: float,
    die_with_parent: bool,
    report: Callable[[str], None],
) -> Cluster:
    began = time.monotonic()
    bins = binaries.resolve_bin_dir(bin_dir, services=node and cluster_services)
    layout.logs.mkdir(parents=True, exist_ok=True)
    bringup = _Bringup(
        layout,
        bins,
        Ports(**previous.get("ports", {})),
        timeout_s=timeout_s,
        die_with_parent=die_with_parent,
        report=report,
    )
    cluster = bringup.run()
    cluster.timings = bringup.timings
    state = {
        "server": cluster.server,
        "bin_dir": str(bins),
        "ports": asdict(cluster.ports),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "node": False,
        "timings": cluster.timings,
    }
    _write_state(layout, state)
    if node:
        cluster.timings["nodeagent"] = _start_node_agent(
            layout, cluster, timeout_s=timeout_s, die_with_parent=die_with_parent, report=report
        )
        state["node"] = cluster.node
        _write_state(layout, state)
    if node and cluster_services and cluster.node:
        cluster.timings["services"] = _start_cluster_services(
            layout, cluster, timeout_s=timeout_s, die_with_parent=die_with_parent, report=report
        )
        state["services"] = cluster.services
    cluster.timings["total"] = time.monotonic() - began
    _write_state(layout, state)
    report(f"control plane up in {cluster.timings['total']:.1f} s; KUBECONFIG={layout.kubeconfig}")
    return cluster


def _write_kubeconfigs(layout: Layout, server: str, certs: pki.ClusterPki) -> None:
    identities = {
        "admin": (layout.kubeconfig, certs.admin),
        "controller-manager": (layout.kubeconfigs / "controller-manager", certs.controller_manager),
        "scheduler": (layout.kubeconfigs / "scheduler", certs.scheduler),
    }
    for user, (path, pair) in identities.items():
        config = kubeconfig.build(
            server, certs.ca.cert, user, kubeconfig.client_cert_credentials(pair.cert, pair.key)
        )
        kubeconfig.write(path, config)


def _wait_for_default_service_account(api: _Api, controller_manager: _Started, timeout_s: float) -> float:
    """The serviceaccount controller's first act; until then no pod in `default` can be created."""
    path = "/api/v1/namespaces/default/serviceaccounts/default"
    try:
        return probes.wait_for(
            "ServiceAccount default/default",
            lambda: api.exists(path),
            timeout_s,
            still_possible=controller_manager.exit_reason,
        )
    except probes.WaitTimeoutError as error:
        raise controller_manager.failure(str(error)) from error


def _remove_stale_kueue_webhooks(api: _Api) -> None:
    """Kueue's webhooks from before this start point at a process that is gone, and with their
    failurePolicy Fail they would refuse every Job; `kueue.install` registers them again."""
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        path = f"/apis/admissionregistration.k8s.io/v1/{kind}?labelSelector={KUEUE_WEBHOOK_LABEL}%3Dtrue"
        probes.request(api.server + path, method="DELETE", context=api.tls)


def _ensure_default_storage_class(api: _Api) -> None:
    body = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": DEFAULT_STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/host-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }
    response = api.create("/apis/storage.k8s.io/v1/storageclasses", body)
    if response is None or response.status not in (201, 409):
        detail = response.body.decode(errors="replace") if response else "no answer"
        raise ControlPlaneError(f"creating the default StorageClass failed: {detail}")


def _start_node_agent(
    layout: Layout,
    cluster: Cluster,
    *,
    timeout_s: float,
    die_with_parent: bool,
    report: Callable[[str], None],
) -> float:
    """Start the node agent through its one-function interface, ``start(run_dir, kubeconfig) -> pid``
    (plus ``die_with_parent=`` when it takes that), record its PID, and wait for a Ready Node."""
    try:
        start = node_agent_start()
    except Exception as error:  # a broken node agent must not look like "no node agent"
        raise ControlPlaneError(
            f"importing {NODE_AGENT_MODULE} failed ({error!r}); use --no-node to skip it"
        ) from error
    if start is None:
        report(f"{NODE_AGENT_MODULE} not found: starting without a node")
        return 0.0
    began = time.monotonic()
    accepts_die_with_parent = "die_with_parent" in inspect.signature(start).parameters
    extra = {"die_with_parent": die_with_parent} if accepts_die_with_parent else {}
    pid = start(layout.root, layout.kubeconfig, **extra)
    try:
        argv = [part for part in Path(f"/proc/{pid}/cmdline").read_text().split("\0") if part]
    except OSError:  # already gone; the wait below reports it with the log
        argv = [NODE_AGENT_MODULE]
    log = layout.log("nodeagent")
    entry = processes.record(layout.root, "nodeagent", pid, argv, log)
    started = _Started("nodeagent", None, entry, log, began)
    api = _Api(cluster.server, pki.cluster_pki(layout.pki))
    try:
        probes.wait_for(
            "a Ready Node", lambda: bool(api.ready_nodes()), timeout_s, still_possible=started.exit_reason
        )
    except probes.WaitTimeoutError as error:
        raise started.failure(str(error)) from error
    cluster.node = True
    elapsed = time.monotonic() - began
    report(f"node agent (pid {pid}) has a Ready Node: {', '.join(api.ready_nodes())} ({elapsed:.1f} s)")
    return elapsed


def _start_cluster_services(
    layout: Layout,
    cluster: Cluster,
    *,
    timeout_s: float,
    die_with_parent: bool,
    report: Callable[[str], None],
) -> float:
    """kube-proxy and CoreDNS in the node agent's network namespace (see :mod:`services`); waits
    until kube-proxy has programmed the Services and CoreDNS has synced with the API server."""
    began = time.monotonic()
    agent = next((r for r in reversed(processes.read_records(layout.root)) if r.name == "nodeagent"), None)
    if agent is None:
        raise ControlPlaneError("kube-proxy and CoreDNS need the node agent's pod network; it is not running")
    network_file = layout.root / "node-network.json"

    def agent_network() -> services.NodeNetworkInfo | None:
        # A Node can read Ready from an earlier start (its Lease has not expired yet), so the file
        # counts only once this agent wrote it.
        net = services.NodeNetworkInfo.read(network_file)
        return net if net is not None and net.pid == agent.pid else None

    agent_started = _Started("nodeagent", None, agent, layout.log("nodeagent"), began)
    try:
        probes.wait_for(
            f"the node agent's pod network ({network_file})",
            lambda: agent_network() is not None,
            timeout_s,
            still_possible=agent_started.exit_reason,
        )
    except probes.WaitTimeoutError as error:
        raise agent_started.failure(str(error)) from error
    net = agent_network()
    assert net is not None
    unbuilt = binaries.missing(cluster.bin_dir, binaries.SERVICES)
    if unbuilt:  # a reused cluster started from a folder built for the demo
        raise ControlPlaneError(
            f"{cluster.bin_dir} lacks {', '.join(unbuilt)}: run {binaries.BUILD_SCRIPT} services, "
            "or use --no-services"
        )
    missing = [tool for tool in ("nft", "nsenter") if shutil.which(tool) is None]
    if missing:
        raise ControlPlaneError(
            f"kube-proxy needs {' and '.join(missing)} (Debian packages nftables, util-linux; "
            "devcluster/build-binaries.sh installs nftables when run as root); use --no-services to skip it"
        )
    certs = pki.cluster_pki(layout.pki)
    api = _Api(cluster.server, certs)
    identities = {
        "kube-proxy": pki.issue_client_cert(layout.pki, "kube-proxy", services.KUBE_PROXY_USER),
        "coredns": pki.issue_client_cert(
            layout.pki,
            "coredns",
            f"system:serviceaccount:{services.COREDNS_NAMESPACE}:{services.COREDNS_SERVICE_ACCOUNT}",
            ["system:serviceaccounts", f"system:serviceaccounts:{services.COREDNS_NAMESPACE}"],
        ),
    }
    relay = f"https://{net.bridge_address}:{net.api_relay_port}"
    configs = {}
    for user, pair in identities.items():
        credentials = kubeconfig.client_cert_credentials(pair.cert, pair.key)
        config = kubeconfig.build(
            relay, certs.ca.cert, user, credentials, tls_server_name=services.API_SERVER_NAME
        )
        configs[user] = kubeconfig.write(layout.kubeconfigs / user, config)
    services.apply_all(api.apply, net)
    proxy_config = layout.root / "kube-proxy.yaml"
    proxy_settings = services.kube_proxy_config(net, configs["kube-proxy"])
    proxy_config.write_text(json.dumps(proxy_settings, indent=2) + "\n")
    core_config = layout.root / "Corefile"
    core_config.write_text(services.corefile(net, configs["coredns"]))
    started = []
    for name, argv in (
        ("kube-proxy", services.kube_proxy_argv(cluster.bin_dir, net, proxy_config)),
        ("coredns", services.coredns_argv(cluster.bin_dir, net, core_config)),
    ):
        log = layout.log(name)
        popen = processes.spawn(
            argv, log, env=_component_env(), cwd=layout.root, die_with_parent=die_with_parent
        )
        record = processes.record(layout.root, name, popen.pid, argv, log)
        started.append(_Started(name, popen, record, log, time.monotonic()))

    def proxy_synced() -> bool:
        response = probes.request(net.kube_proxy_metrics, timeout_s=2.0)
        return response is not None and services.kube_proxy_synced(response.body.decode(errors="replace"))

    for component, what, condition in (
        (started[0], "kube-proxy's first sync of the Service rules", proxy_synced),
        (started[1], "CoreDNS /ready", _answers(net.coredns_ready)),
    ):
        try:
            probes.wait_for(what, condition, timeout_s, still_possible=component.exit_reason)
        except probes.WaitTimeoutError as error:
            raise component.failure(str(error)) from error
    cluster.services = True
    elapsed = time.monotonic() - began
    report(
        f"kube-proxy and CoreDNS up in {net.namespace_path} (cluster DNS {services.CLUSTER_DNS_IP} → "
        f"{net.bridge_address}) ({elapsed:.1f} s)"
    )
    return elapsed


def down(
    run_dir: Path | None = None, *, grace_s: float = 10.0, purge: bool = False
) -> list[processes.StopResult]:
    """Stop every process recorded in ``run_dir``, newest first; with ``purge`` also delete it."""
    layout = Layout((run_dir or default_run_dir()).resolve())
    if not layout.root.exists():
        return []
    with _locked(layout):
        results = processes.stop_all(layout.root, grace_s)
        survivors = [r for r in processes.read_records(layout.root) if processes.is_alive(r)]
        if survivors:
            raise ControlPlaneError(f"still running after down: {survivors}")
    if purge:
        looks_like_run_dir = (
            layout.state.exists() or layout.pki.exists() or processes.pid_dir(layout.root).exists()
        )
        if not looks_like_run_dir:
            raise ControlPlaneError(f"{layout.root} does not look like a run directory; not deleting it")
        shutil.rmtree(layout.root)
    return results


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int
    alive: bool
    log: str | None


@dataclass(frozen=True)
class Status:
    run_dir: Path
    server: str | None
    ready: bool
    components: list[ComponentStatus]
    ready_nodes: list[str]


def status(run_dir: Path | None = None) -> Status:
    layout = Layout((run_dir or default_run_dir()).resolve())
    state = _read_state(layout)
    components = [
        ComponentStatus(r.name, r.pid, processes.is_alive(r), r.log)
        for r in processes.read_records(layout.root)
    ]
    ready = False
    nodes: list[str] = []
    if state.get("server") and any(c.alive for c in components):
        api = _Api(state["server"], pki.cluster_pki(layout.pki))
        ready = api.ready()
        nodes = api.ready_nodes() if ready else []
    return Status(layout.root, state.get("server"), ready, components, nodes)
