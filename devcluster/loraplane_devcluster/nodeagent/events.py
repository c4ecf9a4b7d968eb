"""Kubernetes Events about pods, as the kubelet records them (``kubectl describe pod`` shows them).

Sent from a background thread so a slow API call never delays a container start; the same
reason and message for the same object is recorded once (then only counted), like the kubelet's
event correlation does in spirit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from loraplane_devcluster.nodeagent.kubeapi import KubeApi, path_of

log = logging.getLogger(__name__)
JsonObject = dict[str, Any]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class EventRecorder:
    def __init__(self, api_factory: Callable[[], KubeApi], node_name: str) -> None:
        self._api_factory = api_factory
        self._node = node_name
        self._queue: queue.Queue[JsonObject | None] = queue.Queue(maxsize=1000)
        self._seen: dict[tuple[str, str, str, str], int] = {}
        self._thread = threading.Thread(target=self._send_all, name="events", daemon=True)
        self._thread.start()

    def pod_event(
        self, pod: JsonObject, reason: str, message: str, *, warning: bool = False, field_path: str = ""
    ) -> None:
        metadata = pod["metadata"]
        key = (metadata.get("uid", ""), field_path, reason, message)
        if key in self._seen:
            return
        self._seen[key] = 1
        if len(self._seen) > 10000:  # a bound, not a cache policy: old keys only suppress repeats
            self._seen.clear()
        involved = {
            "kind": "Pod",
            "apiVersion": "v1",
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata.get("uid"),
        }
        if field_path:
            involved["fieldPath"] = field_path
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kubelet", "host": self._node},
            "reportingComponent": "kubelet",
            "reportingInstance": self._node,
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("event queue full; dropped %s %s", reason, message)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)

    def _send_all(self) -> None:
        api = self._api_factory()
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                api.create(path_of("v1", "events", event["metadata"]["namespace"]), event)
            except Exception as error:  # an Event is best effort; the sender must live on
                log.debug("event not recorded: %s", error)
