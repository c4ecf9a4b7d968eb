"""One pod on the node: its sandbox (address, folders, volumes), its containers' lives, its status.

The agent calls :meth:`PodRunner.sync` from its one loop thread, on every pod event and every
tick. ``sync`` is level-based: it looks at the pod object and at the processes, takes the next
step (prepare the sandbox, run the next init container, start or restart a container after its
back-off, run due probes, stop everything when the pod is deleted) and writes the status when it
changed. Only the loop thread starts processes (see ``runtime.py`` on PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import calendar
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplane_devcluster.nodeagent import status as st
from loraplane_devcluster.nodeagent.config import AgentConfig
from loraplane_devcluster.nodeagent.containers import CONTAINER_ID_SCHEME, Backoff, ContainerRunner
from loraplane_devcluster.nodeagent.dns import hostname_and_domain, resolv_conf, uts_hostname
from loraplane_devcluster.nodeagent.env import (
    ContainerConfigError,
    EnvContext,
    ObjectLookup,
    PodNetwork,
    container_env,
    expand_all,
)
from loraplane_devcluster.nodeagent.events import EventRecorder
from loraplane_devcluster.nodeagent.images import ImageMap, container_argv
from loraplane_devcluster.nodeagent.kubeapi import ApiError, KubeApi, path_of
from loraplane_devcluster.nodeagent.network import HOST_IP, NetworkSetupError, NodeNetwork, NoFreeAddressError
from loraplane_devcluster.nodeagent.probes import (
    PROBE_FIELDS,
    ProbeKind,
    ProbeTarget,
    run_probe,
)
from loraplane_devcluster.nodeagent.runtime import ContainerFiles, ContainerProcess, LaunchSpec
from loraplane_devcluster.nodeagent.volumes import (
    PreparedVolume,
    VolumeContext,
    VolumeError,
    container_mounts,
    hosts_file_content,
    prepare_volumes,
    refresh_tokens,
    token_lifetime_s,
)

log = logging.getLogger(__name__)
JsonObject = dict[str, Any]

DEFAULT_GRACE_S = 30
MINIMUM_GRACE_S = 2
CONFIG_RETRY_S = 2.0
IMAGE_RETRY_S = 5.0
VOLUME_RETRY_S = 2.0
# Service-account tokens are rewritten well before they expire (the kubelet: at 80 % of their life).
TOKEN_REFRESH_FRACTION = 0.8


def iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def pod_key(pod: JsonObject) -> str:
    metadata = pod["metadata"]
    return f"{metadata['namespace']}/{metadata['name']}"


@dataclass
class NodeServices:
    """What a pod runner needs from the agent."""

    config: AgentConfig
    api: KubeApi
    image_map: Callable[[], ImageMap]
    network: NodeNetwork
    probes: ThreadPoolExecutor
    events: EventRecorder
    service_env: dict[str, str]
    host_network_service_env: dict[str, str]
    allocatable: dict[str, str]
    wake: Callable[[], None]
    host_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Termination:
    """The pod is being stopped for good: deleted, gone from the API, or past its deadline."""

    began: float
    deadline: float
    delete_from_api: bool
    reason: str = ""
    message: str = ""
    sigterm_sent: bool = False
    sigkill_sent: bool = False


class PodRunner:
    def __init__(self, pod: JsonObject, node: NodeServices) -> None:
        self.node = node
        self.pod = pod
        metadata = pod["metadata"]
        self.uid: str = metadata["uid"]
        self.namespace: str = metadata["namespace"]
        self.name: str = metadata["name"]
        self.dir = node.config.pods_dir / f"{self.namespace}_{self.name}_{self.uid}"
        spec = pod["spec"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        init_specs = spec.get("initContainers") or []
        base, cap = node.config.backoff_base_s, node.config.backoff_cap_s
        self.init = [
            ContainerRunner(c, is_init=True, waiting_reason="PodInitializing", backoff=Backoff(base, cap))
            for c in init_specs
        ]
        first_wait = "PodInitializing" if init_specs else "ContainerCreating"
        self.containers = [
            ContainerRunner(c, is_init=False, waiting_reason=first_wait, backoff=Backoff(base, cap))
            for c in spec["containers"]
        ]
        self.pod_ip = ""
        self.netns = ""  # the pod's network namespace; "" for a host-network pod
        self.volumes: dict[str, PreparedVolume] | None = None
        self.sandbox_retry_at = 0.0
        self.start_time = ""
        self.final_phase = ""
        self.termination: Termination | None = None
        self.finished = False  # all done: the agent may forget this runner
        self.condition_memory: dict[str, tuple[str, str]] = {
            c["type"]: (c.get("status", ""), c.get("lastTransitionTime", ""))
            for c in (pod.get("status") or {}).get("conditions") or []
            if c.get("type") in st.OWNED_CONDITIONS
        }
        self.last_patch: JsonObject | None = None
        self.token_refresh_at = 0.0
        self._adopt_observed_status(pod)

    # --- bookkeeping -------------------------------------------------------------------------

    @property
    def hostname(self) -> str:
        return hostname_and_domain(self.pod, self.node.config.cluster_domain)[0]

    @property
    def domain(self) -> str:
        return hostname_and_domain(self.pod, self.node.config.cluster_domain)[1]

    @property
    def all_containers(self) -> list[ContainerRunner]:
        return [*self.init, *self.containers]

    def processes(self) -> list[ContainerProcess]:
        return [c.process for c in self.all_containers if c.process is not None]

    def _adopt_observed_status(self, pod: JsonObject) -> None:
        """Take over a pod an earlier agent ran: its address, its finished init containers, its counts.

        Its processes died with that agent, so a container that had run counts a restart (or, under
        ``restartPolicy: Never``, ends as ContainerStatusUnknown, as after a node reboot).
        """
        status = pod.get("status") or {}
        if status.get("phase") in st.TERMINAL_PHASES:
            self.final_phase = status["phase"]
            return
        observed = {
            s["name"]: s
            for key in ("initContainerStatuses", "containerStatuses")
            for s in status.get(key) or []
        }
        self.start_time = status.get("startTime", "")
        for runner in self.all_containers:
            seen = observed.get(runner.name)
            if not seen:
                continue
            state = seen.get("state") or {}
            terminated = state.get("terminated")
            if runner.is_init and terminated and terminated.get("exitCode") == 0:
                runner.state = st.Terminated(
                    0, "Completed", terminated.get("startedAt", ""), terminated.get("finishedAt", "")
                )
                runner.done = True
                continue
            if not (state.get("running") or terminated or (seen.get("lastState") or {}).get("terminated")):
                continue
            lost = st.Terminated(
                137,
                "ContainerStatusUnknown",
                (state.get("running") or {}).get("startedAt", self.start_time),
                iso(time.time()),
                "The container could not be located when the node agent restarted",
            )
            runner.runs = int(seen.get("restartCount", 0)) + 1
            runner.last_state = lost
            if self.restart_policy == "Never" or (
                terminated and terminated.get("exitCode") == 0 and self.restart_policy != "Always"
            ):
                runner.state = (
                    lost
                    if not terminated
                    else st.Terminated(
                        terminated.get("exitCode", 137),
                        terminated.get("reason", "Error"),
                        terminated.get("startedAt", ""),
                        terminated.get("finishedAt", ""),
                        terminated.get("message", ""),
                    )
                )
                runner.last_state = None
                runner.done = True

    def update(self, pod: JsonObject) -> None:
        self.pod = pod

    # --- the step ------------------------------------------------------------------------------

    def sync(self, now: float, *, gone: bool = False) -> None:
        """Take the next steps for this pod. ``gone``: the pod no longer exists in the API."""
        if self.finished:
            return
        deleted = gone or bool(self.pod["metadata"].get("deletionTimestamp"))
        if deleted and self.termination is None:
            self._begin_termination(now, delete_from_api=not gone)
        elif deleted and self.termination is not None:
            # A second delete with a shorter grace period (e.g. --force) shortens the wait.
            grace = _grace_s(self.pod, self.pod["metadata"].get("deletionGracePeriodSeconds"))
            self.termination.deadline = min(self.termination.deadline, self.termination.began + grace)
        if self.termination is not None:
            self._terminate_step(now, gone)
            return
        if self.final_phase:
            return
        sandbox_missing = self.pod_ip == "" or self.volumes is None
        if sandbox_missing and (now < self.sandbox_retry_at or not self._prepare_sandbox(now)):
            self._write_status(now)
            return
        self._check_deadline(now)
        if self.termination is not None:
            return
        self._refresh_tokens_if_due(now)
        init_done = True
        for runner in self.init:
            self._step_container(runner, now, can_start=True)
            if not runner.succeeded:
                init_done = False
                break
        for runner in self.containers:
            self._step_container(runner, now, can_start=init_done)
            self._step_probes(runner, now)
        self._write_status(now)

    # --- sandbox -----------------------------------------------------------------------------------

    def _prepare_sandbox(self, now: float) -> bool:
        """Address, folders, /etc/hosts and volumes; False (retry later) when a volume is not ready."""
        try:
            if not self.pod_ip and self.host_network:
                self.pod_ip = HOST_IP  # as on any node: a host-network pod has the node's address
            elif not self.pod_ip:
                preferred = (self.pod.get("status") or {}).get("podIP")
                address = self.node.network.addresses.allocate(self.uid, preferred)
                self.netns = self.node.network.attach(self.uid, address)
                self.pod_ip = address
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "tmp").mkdir(exist_ok=True)
            (self.dir / "tmp").chmod(0o1777)
            (self.dir / "etc-hosts").write_text(hosts_file_content(self.pod_ip, self.hostname, self.domain))
            resolver = resolv_conf(self.pod, self.node.config.cluster_dns, self.node.config.cluster_domain)
            if resolver is not None:
                (self.dir / "resolv.conf").write_text(resolver)
            self.volumes = prepare_volumes(self.pod, self.dir, self._volume_context())
        except (NoFreeAddressError, NetworkSetupError) as error:
            self.node.network.addresses.release(self.uid)
            self._sandbox_failed(
                now, "FailedCreatePodSandBox", f"Failed to create pod sandbox: {error}", error
            )
            return False
        except (VolumeError, ApiError) as error:
            self._sandbox_failed(now, "FailedMount", f"MountVolume failed: {error}", error)
            return False
        if not self.start_time:
            self.start_time = iso(time.time())
        lifetime = token_lifetime_s(self.pod)
        if lifetime is not None:
            self.token_refresh_at = now + TOKEN_REFRESH_FRACTION * lifetime
        return True

    def _sandbox_failed(self, now: float, reason: str, message: str, error: Exception) -> None:
        """Say why the sandbox is not ready (an Event, the waiting containers' message); retry later."""
        self.sandbox_retry_at = now + VOLUME_RETRY_S
        self.node.events.pod_event(self.pod, reason, message, warning=True)
        for runner in self.all_containers:
            if isinstance(runner.state, st.Waiting) and runner.state.reason in {
                "ContainerCreating",
                "PodInitializing",
            }:
                runner.state = st.Waiting(runner.state.reason, str(error))

    @property
    def host_network(self) -> bool:
        return bool(self.pod["spec"].get("hostNetwork"))

    def _refresh_tokens_if_due(self, now: float) -> None:
        if self.token_refresh_at and now >= self.token_refresh_at:
            try:
                refresh_tokens(self.pod, self.dir, self._volume_context())
                self.token_refresh_at = now + TOKEN_REFRESH_FRACTION * (token_lifetime_s(self.pod) or 3600)
            except (VolumeError, ApiError) as error:
                log.warning("%s: token refresh failed, retrying: %s", pod_key(self.pod), error)
                self.token_refresh_at = now + 30

    def _objects(self) -> ObjectLookup:
        api = self.node.api
        return ObjectLookup(
            config_map=lambda name: api.get_or_none(path_of("v1", "configmaps", self.namespace, name)),
            secret=lambda name: api.get_or_none(path_of("v1", "secrets", self.namespace, name)),
        )

    def _claim_host_path(self, claim_name: str) -> str:
        api = self.node.api
        claim = api.get_or_none(path_of("v1", "persistentvolumeclaims", self.namespace, claim_name))
        if claim is None:
            raise VolumeError(f'persistentvolumeclaim "{claim_name}" not found')
        volume_name = claim.get("spec", {}).get("volumeName")
        if (claim.get("status") or {}).get("phase") != "Bound" or not volume_name:
            raise VolumeError(f'persistentvolumeclaim "{claim_name}" is not bound yet')
        volume = api.get(path_of("v1", "persistentvolumes", None, volume_name))
        spec = volume.get("spec", {})
        path = (spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path")
        if not path:
            raise VolumeError(
                f"PersistentVolume {volume_name} is neither hostPath nor local; "
                "the dev node mounts only host folders"
            )
        Path(path).mkdir(parents=True, exist_ok=True)
        return str(path)

    def _token(self, service_account: str, audiences: list[str], expiration_s: int) -> str:
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audiences,
                "expirationSeconds": expiration_s,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        path = path_of("v1", "serviceaccounts", self.namespace, service_account) + "/token"
        try:
            answer = self.node.api.create(path, request)
        except ApiError as error:
            raise VolumeError(f"token for service account {service_account}: {error}") from error
        return str(answer["status"]["token"])

    def _volume_context(self) -> VolumeContext:
        objects = self._objects()
        return VolumeContext(
            config_map=objects.config_map,
            secret=objects.secret,
            claim_host_path=self._claim_host_path,
            token=self._token,
            network=PodNetwork(self.pod_ip, HOST_IP),
            allocatable=self.node.allocatable,
        )

    # --- containers --------------------------------------------------------------------------------

    def _should_restart(self, runner: ContainerRunner, exit_code: int) -> bool:
        if runner.is_init:
            return exit_code != 0 and self.restart_policy != "Never"
        return self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and exit_code != 0)

    def _reap(self, runner: ContainerRunner) -> st.Terminated | None:
        process = runner.process
        if process is None or process.poll() is None:
            return None
        exit_code = process.exit_code if process.exit_code is not None else 137
        start_error = process.start_error()
        if start_error is not None:
            reason, message = "StartError", start_error
        else:
            reason = st.exit_reason(exit_code)
            fallback = runner.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            message = process.termination_message(fallback)
        finished = process.finished_wall or time.time()
        terminated = st.Terminated(
            exit_code,
            reason,
            iso(process.started_wall),
            iso(finished),
            message,
            f"{CONTAINER_ID_SCHEME}{process.pid}",
        )
        runner.process = None
        runner.trackers = {}
        runner.probe_futures = {}
        runner.kill_deadline = None
        runner.sigkill_sent = False
        log.info("%s: container %s exited with %s (%s)", pod_key(self.pod), runner.name, exit_code, reason)
        return terminated

    def _step_container(self, runner: ContainerRunner, now: float, *, can_start: bool) -> None:
        if (
            runner.kill_deadline is not None
            and now >= runner.kill_deadline
            and not runner.sigkill_sent
            and runner.process
        ):
            runner.process.signal_group(signal.SIGKILL)
            runner.sigkill_sent = True
        terminated = self._reap(runner)
        if terminated is not None:
            if self._should_restart(runner, terminated.exit_code):
                ran_for = now - runner.started_mono
                delay = runner.backoff.next_delay(ran_for)
                runner.last_state = terminated
                runner.not_before = now + delay
                if delay > 0:
                    message = (
                        f"back-off {delay:g}s restarting failed container={runner.name} "
                        f"pod={self.name}_{self.namespace}({self.uid})"
                    )
                    runner.state = st.Waiting("CrashLoopBackOff", message)
                    self.node.events.pod_event(
                        self.pod,
                        "BackOff",
                        f"Back-off restarting failed container {runner.name} in pod {self.name}",
                        warning=True,
                    )
                else:
                    runner.state = terminated
            else:
                runner.state = terminated
                runner.done = True
        if runner.process is None and not runner.done and can_start and now >= runner.not_before:
            self._start(runner, now)

    def _start(self, runner: ContainerRunner, now: float) -> None:
        spec = runner.spec
        field_path = f"spec.{'initContainers' if runner.is_init else 'containers'}{{{runner.name}}}"
        if runner.is_init and spec.get("restartPolicy") == "Always":
            runner.state = st.Waiting(
                "CreateContainerError",
                "restartable init containers (sidecars) are not supported by the dev node",
            )
            runner.not_before = now + IMAGE_RETRY_S
            return
        images = self.node.image_map()
        entry = images.lookup(spec.get("image", ""))
        if entry is None:
            message = images.unmapped_message(spec.get("image", ""))
            runner.state = st.Waiting("ErrImagePull", message)
            runner.not_before = now + IMAGE_RETRY_S
            self.node.events.pod_event(
                self.pod, "Failed", f"Failed to pull image: {message}", warning=True, field_path=field_path
            )
            return
        network = PodNetwork(self.pod_ip, HOST_IP)
        try:
            services = self.node.host_network_service_env if self.host_network else self.node.service_env
            context = EnvContext(self._objects(), network, services, self.node.allocatable)
            pod_env = container_env(self.pod, spec, context)
            env = {
                "HOME": os.path.expanduser("~"),
                "HOSTNAME": self.hostname,
                **self.node.host_env,
                **images.container_env_defaults(entry),
                **pod_env,
            }
            # Like the kubelet, $(VAR) sees the variables Kubernetes defines, not the image's ENV.
            argv = container_argv(
                expand_all(list(spec.get("command") or []), pod_env),
                expand_all(list(spec.get("args") or []), pod_env),
                entry,
            )
            files = ContainerFiles(self.dir / "containers" / runner.name, self.dir / f"{runner.name}.log")
            mounts = container_mounts(
                spec,
                self.volumes or {},
                pod_env,
                pod_tmp=self.dir / "tmp",
                hosts_file=self.dir / "etc-hosts",
                termination_log=files.termination_log,
                resolv_conf=self.dir / "resolv.conf" if (self.dir / "resolv.conf").exists() else None,
                host_paths=(self.node.config.project_dir, self.node.config.venv),
            )
            for mount in mounts:
                if mount.create_source and not os.path.lexists(mount.source):
                    os.makedirs(mount.source, exist_ok=True)
        except (ContainerConfigError, VolumeError, ApiError) as error:
            runner.state = st.Waiting("CreateContainerConfigError", str(error))
            runner.not_before = now + CONFIG_RETRY_S
            self.node.events.pod_event(
                self.pod, "Failed", f"Error: {error}", warning=True, field_path=field_path
            )
            return
        working_dir = spec.get("workingDir") or entry.working_dir
        runner.process = ContainerProcess(
            LaunchSpec(
                argv,
                env,
                mounts,
                working_dir,
                uts_hostname(self.pod, self.node.config.cluster_domain),
                self.netns,
            ),
            files,
        )
        runner.runs += 1
        runner.started_mono = now
        runner.env = env
        runner.state = st.Running(iso(runner.process.started_wall))
        runner.reset_probes(now)
        log.info(
            "%s: started container %s (pid %s): %s", pod_key(self.pod), runner.name, runner.process.pid, argv
        )
        self.node.events.pod_event(
            self.pod, "Started", f"Started container {runner.name} (run {runner.runs})", field_path=field_path
        )

    def _kill_container(self, runner: ContainerRunner, now: float, kind: ProbeKind) -> None:
        """Stop a container whose liveness or startup probe failed; restartPolicy decides what next."""
        if runner.process is None or runner.kill_deadline is not None:
            return
        probe_grace = runner.spec[PROBE_FIELDS[kind]].get("terminationGracePeriodSeconds")
        grace = _grace_s(self.pod, probe_grace)
        why = f"failed {kind} probe"
        runner.process.signal_group(signal.SIGTERM)
        runner.kill_deadline = now + grace
        self.node.events.pod_event(self.pod, "Killing", f"Container {runner.name} {why}, will be restarted")

    # --- probes ----------------------------------------------------------------------------------------

    def _step_probes(self, runner: ContainerRunner, now: float) -> None:
        if runner.process is None or runner.kill_deadline is not None:
            return
        for kind, future in list(runner.probe_futures.items()):
            if not future.done():
                continue
            del runner.probe_futures[kind]
            tracker = runner.trackers[kind]
            result = future.result()
            changed = tracker.record(result)
            runner.probe_next[kind] = now + tracker.settings.period_s
            if not result.ok:
                self.node.events.pod_event(
                    self.pod, "Unhealthy", f"{kind.capitalize()} probe failed: {result.message}", warning=True
                )
            if changed and kind in ("liveness", "startup") and not tracker.verdict:
                self._kill_container(runner, now, kind)
                return
        startup = runner.trackers.get("startup")
        due_kinds: list[ProbeKind] = (
            ["startup"] if startup and not startup.verdict else ["liveness", "readiness"]
        )
        for kind in due_kinds:
            if kind not in runner.trackers or kind in runner.probe_futures or now < runner.probe_next[kind]:
                continue
            target = ProbeTarget(
                pod_ip=self.pod_ip,
                ports={
                    p["name"]: int(p["containerPort"])
                    for p in runner.spec.get("ports") or []
                    if p.get("name")
                },
                pid=runner.process.pid,
                env=runner.env,
            )
            probe = runner.spec[PROBE_FIELDS[kind]]
            future = self.node.probes.submit(run_probe, probe, target)
            future.add_done_callback(lambda _f: self.node.wake())
            runner.probe_futures[kind] = future

    # --- deadline and termination ------------------------------------------------------------------

    def _check_deadline(self, now: float) -> None:
        """``spec.activeDeadlineSeconds`` of the pod itself (the kubelet enforces it)."""
        deadline_s = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline_s is None or not self.start_time:
            return
        started = calendar.timegm(time.strptime(self.start_time, "%Y-%m-%dT%H:%M:%SZ"))
        if time.time() - started >= int(deadline_s):
            self._begin_termination(now, delete_from_api=False)
            assert self.termination is not None
            self.termination.reason = "DeadlineExceeded"
            self.termination.message = "Pod was active on the node longer than the specified deadline"

    def _begin_termination(self, now: float, *, delete_from_api: bool) -> None:
        grace = _grace_s(self.pod, self.pod["metadata"].get("deletionGracePeriodSeconds"))
        self.termination = Termination(began=now, deadline=now + grace, delete_from_api=delete_from_api)
        if self.processes():
            log.info(
                "%s: stopping %d container(s), grace %ss", pod_key(self.pod), len(self.processes()), grace
            )

    def _terminate_step(self, now: float, gone: bool) -> None:
        termination = self.termination
        assert termination is not None
        if not termination.sigterm_sent:
            for runner in self.all_containers:
                if runner.process is not None:
                    self.node.events.pod_event(self.pod, "Killing", f"Stopping container {runner.name}")
                    runner.process.signal_group(signal.SIGTERM)
            termination.sigterm_sent = True
        if now >= termination.deadline and not termination.sigkill_sent:
            for process in self.processes():
                process.signal_group(signal.SIGKILL)
            termination.sigkill_sent = True
        for runner in self.all_containers:
            terminated = self._reap(runner)
            if terminated is not None:
                runner.state = terminated
                runner.done = True
        if self.processes():
            if not gone:
                self._write_status(now, terminal_pending=True)
            return
        self._finish_termination(now, gone)

    def _finish_termination(self, now: float, gone: bool) -> None:
        termination = self.termination
        assert termination is not None
        for runner in self.all_containers:
            if isinstance(runner.state, st.Waiting):
                if runner.last_state is not None:
                    runner.state, runner.last_state = runner.last_state, None
                elif not runner.is_init or runner.runs == 0:
                    runner.state = st.Terminated(
                        137,
                        "ContainerStatusUnknown",
                        "",
                        iso(time.time()),
                        "The container could not be located when the pod was terminated",
                    )
            runner.done = True
        if not gone:
            if not self.final_phase and self.pod_ip:
                self._write_status(now, terminal=True)
            if termination.delete_from_api:
                self._delete_from_api()
        self._release()
        if termination.delete_from_api or gone:
            self.finished = True
        else:  # past its deadline: the pod stays, Failed
            self.termination = None

    def _delete_from_api(self) -> None:
        """Remove the pod object, as the kubelet does once its containers are gone."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.node.api.delete(path_of("v1", "pods", self.namespace, self.name), body)
        except ApiError as error:
            if not (error.not_found or error.conflict):
                log.warning("%s: delete failed: %s", pod_key(self.pod), error)

    def _release(self) -> None:
        """Give back the address and network namespace, drop the pod's volumes and /tmp; its logs stay."""
        self._release_network()
        for sub in ("volumes", "tmp"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)

    def _release_network(self) -> None:
        if self.netns:
            self.node.network.detach(self.uid)
            self.netns = ""
        self.node.network.addresses.release(self.uid)

    def stop_now(self) -> list[ContainerProcess]:
        """Agent shutdown: SIGTERM every container; returns those still running (the caller kills them)."""
        for process in self.processes():
            process.signal_group(signal.SIGTERM)
        return self.processes()

    # --- status ------------------------------------------------------------------------------------------

    def _write_status(self, now: float, *, terminal: bool = False, terminal_pending: bool = False) -> None:
        if self.final_phase:
            return
        stopping = terminal or terminal_pending
        init_views = [r.view(ready_allowed=not stopping) for r in self.init]
        views = [r.view(ready_allowed=not stopping) for r in self.containers]
        phase = st.pod_phase(self.restart_policy, init_views, views, terminal=terminal)
        if terminal_pending and phase in st.TERMINAL_PHASES:
            phase = "Running"
        observed_conditions = (self.pod.get("status") or {}).get("conditions") or []
        gates = [g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []]
        conditions = st.owned_conditions(
            sandbox_ready=bool(self.pod_ip) and self.volumes is not None,
            init=init_views,
            containers=views,
            phase=phase,
            readiness_gates=gates,
            observed_conditions=observed_conditions,
        )
        generation = self.pod["metadata"].get("generation")
        conditions_json, self.condition_memory = st.conditions_json(
            conditions, self.condition_memory, iso(time.time()), generation
        )
        termination = self.termination
        patch = st.status_patch(
            phase=phase,
            conditions=conditions_json,
            pod_ip=self.pod_ip or "",
            host_ip=HOST_IP,
            start_time=self.start_time or iso(time.time()),
            init=init_views,
            containers=views,
            generation=generation,
            reason=termination.reason if termination and phase == "Failed" else "",
            message=termination.message if termination and phase == "Failed" else "",
        )
        if not self.pod_ip:  # no address yet: say nothing about one
            for key in ("podIP", "podIPs"):
                patch["status"].pop(key)
        if patch != self.last_patch:
            try:
                self.node.api.patch(path_of("v1", "pods", self.namespace, self.name) + "/status", patch)
            except ApiError as error:
                if not error.not_found:
                    log.warning("%s: status patch failed (will retry): %s", pod_key(self.pod), error)
                return
            except Exception as error:  # the API may be briefly unreachable; the next tick retries
                log.warning("%s: status patch failed (will retry): %s", pod_key(self.pod), error)
                return
            self.last_patch = patch
        if phase in st.TERMINAL_PHASES:
            # Once reported, a terminal phase is final: nothing restarts, the address goes back.
            self.final_phase = phase
            if self.termination is None:
                self._release_network()
                log.info("%s: %s", pod_key(self.pod), phase)


def _grace_s(pod: JsonObject, deletion_grace: int | None) -> int:
    """Seconds between SIGTERM and SIGKILL; at least 2, the kubelet's minimum (even for a force delete)."""
    if deletion_grace is not None:
        return max(MINIMUM_GRACE_S, int(deletion_grace))
    value = pod["spec"].get("terminationGracePeriodSeconds")
    return DEFAULT_GRACE_S if value is None else max(MINIMUM_GRACE_S, int(value))
