"""The agent: register the Node, watch the pods bound to it, and drive one PodRunner per pod.

Threads: a pod watcher (list + watch, filtered on ``spec.nodeName``) keeps a cache of the node's
pods and wakes the loop on every event; a heartbeat keeps the Node Ready and its Lease fresh;
probes run in a small pool; Events are sent from a queue; the log endpoint serves ``kubectl
logs``. Everything that starts or stops a container happens in the loop, on the main thread.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from loraplane_devcluster.nodeagent.apirelay import ApiRelay, listen_in_namespace
from loraplane_devcluster.nodeagent.config import AgentConfig
from loraplane_devcluster.nodeagent.env import service_env
from loraplane_devcluster.nodeagent.events import EventRecorder
from loraplane_devcluster.nodeagent.images import ImageMapSource
from loraplane_devcluster.nodeagent.kubeapi import KubeApi, apiserver_address
from loraplane_devcluster.nodeagent.logs import LogServer
from loraplane_devcluster.nodeagent.network import (
    HOST_IP,
    KUBERNETES_SERVICE_IP,
    KUBERNETES_SERVICE_PORT,
    SUBNET_PREFIX_LEN,
    NodeNetwork,
    Subnet,
    claim_node_index,
    remove_stale_networks,
)
from loraplane_devcluster.nodeagent.node import NodeHeartbeat
from loraplane_devcluster.nodeagent.pods import NodeServices, PodRunner, pod_key
from loraplane_devcluster.nodeagent.runtime import kill_group, kill_leftovers

log = logging.getLogger(__name__)
JsonObject = dict[str, Any]
PODS_PATH = "/api/v1/pods"
RELIST_PAUSE_S = 1.0
PROBE_WORKERS = 8


class PodWatcher:
    """The node's pods by UID, kept current by list + watch; calls ``on_change`` after every change."""

    def __init__(self, kubeconfig: Path, node_name: str, on_change: Any, stop: threading.Event) -> None:
        self._kubeconfig = kubeconfig
        self._selector = f"spec.nodeName={node_name}"
        self._on_change = on_change
        self._stop = stop
        self._lock = threading.Lock()
        self._pods: dict[str, JsonObject] = {}
        # The last state of deleted pods (a force delete says its grace period only there).
        self._deleted: dict[str, JsonObject] = {}
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def snapshot(self) -> dict[str, JsonObject]:
        with self._lock:
            return dict(self._pods)

    def last_seen_deleted(self, uid: str) -> JsonObject | None:
        with self._lock:
            return self._deleted.pop(uid, None)

    def forget_deleted_except(self, uids: set[str]) -> None:
        with self._lock:
            self._deleted = {uid: pod for uid, pod in self._deleted.items() if uid in uids}

    def _run(self) -> None:
        api = KubeApi(self._kubeconfig)
        while not self._stop.is_set():
            try:
                listing = api.get(PODS_PATH, fieldSelector=self._selector)
                with self._lock:
                    self._pods = {p["metadata"]["uid"]: p for p in listing.get("items") or []}
                self.synced.set()
                self._on_change()
                self._watch(api, listing["metadata"]["resourceVersion"])
            except Exception as error:  # relist after any failure, as informers do
                log.warning("pod watch failed, listing again: %s", error)
            self._stop.wait(RELIST_PAUSE_S)

    def _watch(self, api: KubeApi, resource_version: str) -> None:
        while not self._stop.is_set():
            for event in api.watch(PODS_PATH, resource_version, fieldSelector=self._selector):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # usually 410 Gone: our resourceVersion is too old
                    log.info("pod watch expired (%s); listing again", obj.get("message"))
                    return
                resource_version = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                with self._lock:
                    if kind == "DELETED":
                        self._pods.pop(obj["metadata"]["uid"], None)
                        self._deleted[obj["metadata"]["uid"]] = obj
                    else:
                        self._pods[obj["metadata"]["uid"]] = obj
                self._on_change()
                if self._stop.is_set():
                    return


def network_file(run_dir: Path) -> Path:
    """RUN_DIR/node-network.json: the running agent's pod network (namespace, bridge address)."""
    return run_dir / "node-network.json"


def pod_network_locks() -> list[Path]:
    """Where agents of every local cluster on this machine claim their pod address ranges.

    Folders of the machine, as the network is the machine's: not under $LORAPLANE_CACHE, which a
    cold-start measurement or a second checkout points elsewhere (there an agent saw none of the
    others' locks, claimed an index a live agent held, and removed their pod networks as leftovers).
    Beside /run/netns, and the default cache's folder too, which agents of earlier versions lock alone.
    """
    legacy = Path.home() / ".cache" / "loraplane" / "run" / ".pod-networks"
    return [RUN_LOCKS, legacy] if os.access(RUN_LOCKS.parent.parent, os.W_OK) else [legacy]


RUN_LOCKS = Path("/run/loraplane/pod-networks")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        config.pods_dir.mkdir(parents=True, exist_ok=True)
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self.runners: dict[str, PodRunner] = {}
        self.done: set[str] = set()  # UIDs whose pods were handled to the end (awaiting deletion by others)
        self.watcher = PodWatcher(config.kubeconfig, config.node_name, self.wake_event.set, self.stop_event)
        self.log_server = self._log_server() if config.log_server else None
        self.heartbeat = NodeHeartbeat(config, self.log_server.port if self.log_server else 0)
        host_env = {name: os.environ[name] for name in config.pass_env if name in os.environ}
        api_host, api_port = apiserver_address(config.kubeconfig)
        self.network, self.api_relay = self._pod_network(api_host, api_port)
        self.services = NodeServices(
            config=config,
            api=KubeApi(config.kubeconfig),
            image_map=ImageMapSource(config.venv, config.project_dir, config.image_map_path).current,
            network=self.network,
            probes=ThreadPoolExecutor(max_workers=PROBE_WORKERS, thread_name_prefix="probe"),
            events=EventRecorder(lambda: KubeApi(config.kubeconfig), config.node_name),
            service_env=service_env(KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT),
            host_network_service_env=service_env(api_host, api_port),
            allocatable=self.heartbeat.allocatable(),
            wake=self.wake_event.set,
            host_env=host_env,
        )

    def _pod_network(self, api_host: str, api_port: int) -> tuple[NodeNetwork, ApiRelay]:
        """This node's pod subnet and bridge, and the relay behind the ``kubernetes`` Service address."""
        locks = pod_network_locks()
        index = claim_node_index(locks)
        stale = remove_stale_networks(locks, index)
        if stale:
            log.warning("removed the pod networks of agents that are gone: %s", stale)
        network = NodeNetwork(Subnet(index))
        network.create()
        # Every address of the node namespace: 10.96.0.1 before kube-proxy runs, and the bridge
        # address, the `kubernetes` Service's endpoint, that kube-proxy DNATs 10.96.0.1 to.
        listener = listen_in_namespace(
            f"/run/netns/{network.subnet.node_namespace}",
            "0.0.0.0",  # noqa: S104 - inside the node namespace, whose addresses are exactly these two
            KUBERNETES_SERVICE_PORT,
        )
        relay = ApiRelay(listener, api_host, api_port)
        relay.start()
        self._write_network_file(network.subnet)
        return network, relay

    def _write_network_file(self, subnet: Subnet) -> None:
        """Where this node's pod network is, for ``up`` (it starts kube-proxy and CoreDNS in it)."""
        info = {
            "pid": os.getpid(),
            "nodeName": self.config.node_name,
            "index": subnet.index,
            "namespace": subnet.node_namespace,
            "namespacePath": f"/run/netns/{subnet.node_namespace}",
            "bridgeAddress": subnet.bridge_address,
            "podSubnet": f"{subnet.prefix}0/{SUBNET_PREFIX_LEN}",
            "apiRelayPort": KUBERNETES_SERVICE_PORT,
        }
        path = network_file(self.config.run_dir)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(path)

    def _log_server(self) -> LogServer | None:
        """The kubelet log endpoint, with a serving certificate from the cluster CA when there is one."""
        pki_dir = self.config.run_dir / "pki"
        try:
            from loraplane_devcluster import pki  # noqa: PLC0415 - only the dev cluster's run dirs have a CA

            pair = pki.issue_serving_cert(
                pki_dir,
                f"kubelet-{self.config.node_name}",
                f"system:node:{self.config.node_name}",
                ["localhost"],
                [HOST_IP],
            )
            server = LogServer(self.config.pods_dir, pair.cert, pair.key, pki_dir / "ca.crt")
        except Exception as error:  # logs on disk still work; only kubectl logs will not
            log.warning("no kubelet log endpoint (kubectl logs will not work): %s", error)
            return None
        server.start()
        log.info("kubelet log endpoint on 127.0.0.1:%s", server.port)
        return server

    # --- lifecycle ----------------------------------------------------------------------------------

    def run(self) -> None:
        leftovers = kill_leftovers(self.config.pods_dir)
        if leftovers:
            log.warning(
                "killed %d container process group(s) left by an earlier agent: %s", len(leftovers), leftovers
            )
        self.heartbeat.register()
        self.heartbeat.start()
        self.watcher.start()
        while not self.watcher.synced.wait(0.5):
            if self.stop_event.is_set():
                break
        log.info("node %s ready; watching its pods", self.config.node_name)
        try:
            while not self.stop_event.is_set():
                self.wake_event.wait(self.config.tick_s)
                self.wake_event.clear()
                self.sync_all()
        finally:
            self.shutdown()

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping every container, then exiting", signum)
        self.stop_event.set()
        self.wake_event.set()

    def sync_all(self) -> None:
        now = time.monotonic()
        pods = self.watcher.snapshot()
        for uid, pod in pods.items():
            if uid in self.done:
                continue
            runner = self.runners.get(uid)
            if runner is None:
                runner = self.runners[uid] = PodRunner(pod, self.services)
            else:
                runner.update(pod)
            self._sync(runner, now, gone=False)
        for uid, runner in list(self.runners.items()):
            if uid not in pods:
                final = self.watcher.last_seen_deleted(uid)
                if final is not None:
                    runner.update(final)
                self._sync(runner, now, gone=True)
            if runner.finished:
                del self.runners[uid]
                if uid in pods:
                    self.done.add(uid)
        self.done &= pods.keys()
        self.watcher.forget_deleted_except(set(self.runners))

    def _sync(self, runner: PodRunner, now: float, *, gone: bool) -> None:
        try:
            runner.sync(now, gone=gone)
        except Exception:  # one broken pod must not stop the node
            log.exception("%s: sync failed", pod_key(runner.pod))

    def shutdown(self) -> None:
        """Stop every container (SIGTERM, a short grace, SIGKILL), then the helpers."""
        running = [p for runner in self.runners.values() for p in runner.stop_now()]
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while any(p.running for p in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in running:
            if process.running:
                kill_group(process.pid, signal.SIGKILL)
            process.poll()
        self.services.probes.shutdown(wait=False, cancel_futures=True)
        self.services.events.close()
        self.heartbeat.stop()
        if self.log_server:
            self.log_server.stop()
        self.api_relay.stop()
        self.network.destroy()
        log.info("stopped %d container(s); node agent exiting", len(running))


def run_agent(config: AgentConfig) -> None:
    agent = Agent(config)
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    agent.run()
