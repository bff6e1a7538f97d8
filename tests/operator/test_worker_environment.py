"""The worker's environment contract: ``TIDE_*`` names and worker defaults are spelled once, in
``tide_worker.environment``, and the worker's CLI, its config, its connection settings and the operator's
generated Deployment all use them."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import tide_operator.spec as spec_mod
import tide_operator.workload as workload_mod
import tide_worker.config as config_mod
import tide_worker.connection as connection_mod
import tide_worker.worker_cli as worker_cli_mod
from tide_worker import environment as E
from tide_worker.config import WorkerConfig, parse_batch_size
from tide_worker.worker_cli import OPTIONS

ENV_NAME = re.compile(r"TIDE_[A-Z_]+")
USERS = [workload_mod, spec_mod, worker_cli_mod, config_mod, connection_mod]


def test_no_module_spells_a_tide_variable_but_the_contract() -> None:
    """A name used as a value (an env entry, a lookup, an option's variable) comes from the contract;
    prose (docstrings, messages) may still name one."""
    spelled = [
        f"{Path(mod.__file__ or '').name}:{node.lineno}: {node.value}"
        for mod in USERS
        for node in ast.walk(ast.parse(Path(mod.__file__ or "").read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value)
    ]
    assert spelled == []


def test_every_worker_default_is_the_contracts() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(WorkerConfig)}
    by_env = {v: k for k, v in vars(E).items() if k.isupper() and not k.startswith("DEFAULT_")}
    for opt in OPTIONS:
        assert opt.env in by_env, opt.flag  # the option's variable is a contract name
        default = getattr(E, "DEFAULT_" + by_env[opt.env], None)
        if default is not None:
            assert opt.default == default, opt.flag
            field = "cluster" if opt.dest == "redis_cluster" else opt.dest
            if field == "batch_size":  # "auto" is the adaptive fetch: WorkerConfig holds it as (None, cap)
                assert parse_batch_size(str(default)) == (fields["batch_size"], fields["batch_max"]), field
            elif field in fields and fields[field] is not dataclasses.MISSING and field != "redis_url":
                assert fields[field] == default, field
    assert spec_mod.DEFAULT_WORKER_CONCURRENCY == E.DEFAULT_CONCURRENCY == WorkerConfig("h").concurrency
    assert spec_mod.DEFAULT_WORKER_MAX_ATTEMPTS == E.DEFAULT_MAX_ATTEMPTS == WorkerConfig("h").max_attempts
    assert workload_mod.METRICS_PORT == E.DEFAULT_METRICS_PORT
    assert connection_mod.RedisSettings().url == E.DEFAULT_REDIS_URL
