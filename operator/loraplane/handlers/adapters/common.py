"""Names and small helpers every module of the LoraAdapter controller shares."""

from __future__ import annotations

import datetime as dt
from typing import Any

from loraplane import GROUP, VERSION, kube
from loraplane.api.adapter import PLURAL, LoraAdapter

RESOURCE = (GROUP, VERSION, PLURAL)
KIND = "LoraAdapter"
DeploymentKey = tuple[str, str]  # (namespace, name)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def parse(body: Any) -> LoraAdapter:
    return LoraAdapter.model_validate(kube.to_plain(body))
