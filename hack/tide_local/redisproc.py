"""Real redis-server processes on free loopback ports: standalone, append-only, TLS and Cluster.

Tests, benchmarks and the demo start their own servers with these classes and stop them by the pid
they started, so nothing else on the machine is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port(also_plus: int | None = None) -> int:
    """A loopback port that is free now (and, for Cluster, whose bus port ``port + also_plus`` is too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if also_plus is None:
            return port
        if port + also_plus < 65536 and _port_free(port + also_plus):
            return port
    raise RuntimeError("no free loopback port found")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise RuntimeError(
            "redis-server is not installed; run `make install` (it installs Debian's redis-server)"
        )
    return path


@dataclass
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost (generated with trustme)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_cert))
    cert.cert_chain_pems[0].write_to_path(str(files.server_cert))
    cert.private_key_pem.write_to_path(str(files.server_key))
    return files


@dataclass
class RedisServer:
    """One redis-server process. ``start()`` waits until it answers PING; ``stop()`` ends its own pid."""

    port: int = 0
    appendonly: bool = False
    password: str | None = None
    tls: TLSFiles | None = None
    cluster: bool = False
    extra_args: list[str] = field(default_factory=list)
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port(also_plus=10000 if self.cluster else None)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"tide-redis-{self.port}-"))

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        assert self.workdir is not None
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        if self.tls:
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.server_cert),
                "--tls-key-file", str(self.tls.server_key),
                "--tls-ca-cert-file", str(self.tls.ca_cert),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000"]  # fmt: skip
        return args + self.extra_args

    def client(self) -> redis.Redis:
        kw: dict[str, object] = {"socket_timeout": 5}
        if self.tls:
            kw["ssl_ca_certs"] = str(self.tls.ca_cert)
        return redis.Redis.from_url(self.url, **kw)

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        log = open(os.devnull, "wb")  # noqa: SIM115 - redis logs to its own logfile
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with self.client() as c:
                    if c.ping():
                        return self
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                last = exc
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING: {last}; {self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the process this object started (SIGKILL if it does not exit in time)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        assert self.workdir is not None
        path = self.workdir / "redis.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def cleanup(self) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass
class RedisCluster:
    """A Redis Cluster of ``masters`` masters and no replicas, all slots assigned."""

    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    def start(self, timeout: float = 30.0) -> RedisCluster:
        self.nodes = [RedisServer(cluster=True).start() for _ in range(self.masters)]
        cli = shutil.which("redis-cli")
        if not cli:
            raise RuntimeError("redis-cli is not installed; run `make install`")
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for n in self.nodes:
                with n.client() as c:
                    states.append(c.execute_command("CLUSTER", "INFO").decode().split("\r\n")[0])
            if all(s == "cluster_state:ok" for s in states):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for n in self.nodes:
            n.cleanup()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
