"""The effect check of one adapter version on one pod, off the pass that loaded it: two greedy
completions of the probe prompt (the base model, then the adapter) compared by `status.versions`.
The controller starts it once per version and records its result in the next pass's status."""

from __future__ import annotations

from loraplane.status import versions
from loraplane.vllm import Server, VllmError, session


async def run(
    server: Server, base_model: str, served_name: str, path: str, prompt: str
) -> versions.CheckResult:
    """The check's result; a failure of the check itself is a result too (ProbeFailed), never raised."""
    try:
        async with session() as client:
            base = await server.complete(client, base_model, prompt, versions.PROBE_TOKENS)
            adapted = await server.complete(client, served_name, prompt, versions.PROBE_TOKENS)
        return versions.compare(path, prompt, versions.Completion.of(base), versions.Completion.of(adapted))
    except VllmError as error:
        return versions.failed(path, error.message)
    except (ValueError, KeyError, TypeError, IndexError) as error:  # an answer of another shape
        return versions.failed(path, f"unexpected completion answer: {error}")
