"""The Lua scripts of ``lua/``: read once, registered with a client (EVALSHA, reloaded on NOSCRIPT).

The one loader of Lua files: the worker's scripts (``Scripts``), the CLI's (``tide dlq requeue``) and the
operator's ``list_backlog.lua`` (in ``tide_operator/lua/``, read with ``script(name, "tide_operator")``).

Every script names every key it touches in KEYS, and all keys of one queue share its hash tag, so the
scripts run unchanged on Redis Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Script:
    """A Lua file's text and the SHA1 ``EVALSHA`` calls it by."""

    name: str
    text: str
    sha: str


@cache
def script(name: str, package: str = "tide_worker") -> Script:
    """``<package>/lua/<name>.lua``, read once."""
    text = (resources.files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    return Script(name, text, hashlib.sha1(text.encode()).hexdigest())


def source(name: str) -> str:
    return script(name).text


class Scripts:
    """One registered script object per Lua file, as attributes (``scripts.fetch_batch(keys, args)``)."""

    def __init__(self, client: Any) -> None:
        self._scripts = {name: client.register_script(source(name)) for name in NAMES}

    def __getattr__(self, name: str) -> Any:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(name) from None
