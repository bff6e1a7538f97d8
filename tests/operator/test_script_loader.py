"""One Lua loader: only ``tide_worker.scripts`` reads ``.lua`` files, for the worker, the CLI and the
operator alike; the operator's script is the loader's (same text, same SHA)."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import tide_operator
import tide_worker
from tide_operator.redis_reader import LIST_BACKLOG_LUA, LIST_BACKLOG_SHA


def _docstring_ids(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            ids.add(id(body[0].value))
    return ids


def test_only_the_loader_reads_lua_files() -> None:
    readers = []
    for pkg in (tide_worker, tide_operator):
        for path in sorted(Path(pkg.__file__ or "").parent.glob("*.py")):
            if path.name == "scripts.py" and pkg is tide_worker:
                continue
            tree = ast.parse(path.read_text())
            docs = _docstring_ids(tree)
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docs
                    and (node.value == "lua" or node.value.endswith(".lua"))
                ):
                    readers.append(f"{pkg.__name__}/{path.name}:{node.lineno}")
    assert readers == []


def test_the_operator_script_is_the_loaders() -> None:
    from tide_worker.scripts import script

    s = script("list_backlog", "tide_operator")
    text = (Path(tide_operator.__file__ or "").parent / "lua" / "list_backlog.lua").read_text()
    assert LIST_BACKLOG_LUA == s.text == text
    assert LIST_BACKLOG_SHA == s.sha == hashlib.sha1(text.encode()).hexdigest()
