"""The Lua scripts of ``lua/``: read once, registered with a client (EVALSHA, reloaded on NOSCRIPT).

Every script names every key it touches in KEYS, and all keys of one queue share its hash tag, so the
scripts run unchanged on Redis Cluster.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

NAMES = (
    "fetch_batch",
    "retry",
    "dead",
    "promote_due",
    "requeue_head",
    "reap",
    "heartbeat",
    "deregister",
    "lease",
    "release",
    "exists_many",
    "stream_ack",
    "stream_dead",
)


@cache
def source(name: str) -> str:
    return (resources.files("tide_worker") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """One registered script object per Lua file, as attributes (``scripts.fetch_batch(keys, args)``)."""

    def __init__(self, client: Any) -> None:
        self._scripts = {name: client.register_script(source(name)) for name in NAMES}

    def __getattr__(self, name: str) -> Any:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(name) from None
