"""Real redis-server processes on free loopback ports: standalone, append-only, TLS, Cluster and Sentinel.

Tests, benchmarks and the demo start their own servers with these classes and stop them by the pid
they started, so nothing else on the machine is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tide_local.ports import free_port


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


@dataclass
class SentinelProcess(RedisServer):
    """One ``redis-server --sentinel`` process (Debian's redis-sentinel is the same binary in this mode).

    ``password`` is the sentinel's own ``requirepass``; ``monitor`` is ``(name, host, port, quorum)``;
    ``master_password`` is what it needs to talk to the master and replicas."""

    monitor: tuple[str, str, int, int] = ("mymaster", "127.0.0.1", 6379, 2)
    master_password: str | None = None
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000

    def command(self) -> list[str]:
        assert self.workdir is not None
        name, host, port, quorum = self.monitor
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            "protected-mode no",
            "loglevel notice",
            f"logfile {self.workdir / 'redis.log'}",
            f"sentinel monitor {name} {host} {port} {quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.master_password:
            lines.append(f"sentinel auth-pass {name} {self.master_password}")
        if self.password:
            lines += [f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}"]
        if self.tls:  # TLS for its clients, and (tls-replication) to the data servers and other sentinels
            lines[0] = "port 0"
            lines += [
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca_cert}",
                "tls-auth-clients no",
                "tls-replication yes",
            ]
        conf = self.workdir / "sentinel.conf"  # sentinel rewrites its config file: it must be writable
        conf.write_text("\n".join(lines) + "\n")
        return [redis_server_binary(), str(conf), "--sentinel"]

    def client(self) -> redis.Redis:
        tls: dict[str, object] = {"ssl": True, "ssl_ca_certs": str(self.tls.ca_cert)} if self.tls else {}
        return redis.Redis(host=self.host, port=self.port, password=self.password, socket_timeout=5, **tls)  # type: ignore[arg-type]


@dataclass
class RedisSentinelSet:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels watching them as ``master_name``.

    ``start()`` returns once every replica has finished its initial sync (the master lists it ``online``)
    and every sentinel sees the master, its replicas and the other sentinels, so a failover can happen
    and promotes a replica that holds the data; ``kill_master()`` SIGKILLs the current master (after
    checking its replicas are in sync) and ``wait_failover()`` waits for the sentinels to name another one.

    A replica the master lists is not yet a copy: it shows up (and the sentinels count it) as soon as it
    connects, in state ``wait_bgsave``, and Redis 7 starts the first full sync only after
    ``repl-diskless-sync-delay`` (5 s by default). Sentinel will promote such a replica, empty, if the
    master dies in that window: every message of the queue is lost. The data servers here run with
    ``repl-diskless-sync-delay 0`` so a set is ready sooner, and ``start()`` waits for the sync."""

    master_name: str = "mymaster"
    replicas: int = 1
    sentinels: int = 3
    password: str | None = None  # the data servers' requirepass (and masterauth)
    sentinel_password: str | None = None
    down_after_ms: int = 1000
    tls: TLSFiles | None = None  # TLS on every server and sentinel, replication included
    servers: list[RedisServer] = field(default_factory=list)
    watchers: list[SentinelProcess] = field(default_factory=list)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(s.host, s.port) for s in self.watchers]

    def url(self, db: int = 0, scheme: str | None = None) -> str:
        scheme = scheme or ("rediss+sentinel" if self.tls else "redis+sentinel")
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"{h}:{p}" for h, p in self.addresses)
        return f"{scheme}://{auth}{hosts}/{self.master_name}/{db}"

    def _server_args(self) -> list[str]:
        args = ["--repl-diskless-sync-delay", "0"] + (["--tls-replication", "yes"] if self.tls else [])
        return args + (
            ["--requirepass", self.password, "--masterauth", self.password] if self.password else []
        )

    def start(self, timeout: float = 30.0) -> RedisSentinelSet:
        master = RedisServer(password=self.password, tls=self.tls, extra_args=self._server_args()).start()
        self.servers = [master]
        for _ in range(self.replicas):
            replica_args = [*self._server_args(), "--replicaof", master.host, str(master.port)]
            self.servers.append(
                RedisServer(password=self.password, tls=self.tls, extra_args=replica_args).start()
            )
        quorum = self.sentinels // 2 + 1
        for _ in range(self.sentinels):
            watcher = SentinelProcess(
                password=self.sentinel_password,
                tls=self.tls,
                monitor=(self.master_name, master.host, master.port, quorum),
                master_password=self.password,
                down_after_ms=self.down_after_ms,
            )
            watcher.start()
            self.watchers.append(watcher)
        deadline = time.monotonic() + timeout
        try:
            self.wait_synced(timeout)
        except RuntimeError:
            self.stop()
            raise
        while time.monotonic() < deadline:
            if all(self._sees_everything(s) for s in self.watchers):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the sentinels did not discover the replicas and each other in time")

    def replication(self) -> dict[int, dict[str, object]]:
        """``INFO replication`` of every running data server, by port, the master's read first (evidence
        for a failover test)."""
        out: dict[int, dict[str, object]] = {}
        master = self.master()
        for n in sorted(self.servers, key=lambda x: x is not master):
            if n.running:
                with n.client() as c:
                    out[n.port] = dict(c.info("replication"))
        return out

    def unsynced_replicas(self) -> list[int]:
        """Ports of running replicas of the current master that have not finished a sync with it: not
        listed ``online`` by the master, or their own link not ``up``."""
        master = self.master()
        with master.client() as c:
            info = c.info("replication")
        online = {
            int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
            and v.get("state") == "online"
        }  # fmt: skip
        behind = []
        for n in self.servers:
            if n is master or not n.running:
                continue
            with n.client() as c:
                link = c.info("replication").get("master_link_status")
            if n.port not in online or link != "up":
                behind.append(n.port)
        return behind

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until every running replica has finished its full sync with the current master."""
        deadline = time.monotonic() + timeout
        behind: list[int] = []
        while time.monotonic() < deadline:
            try:
                behind = self.unsynced_replicas()
            except (redis.ConnectionError, redis.TimeoutError, StopIteration):
                behind = [-1]
            if not behind:
                return
            time.sleep(0.05)
        raise RuntimeError(f"replicas {behind} did not finish their sync with the master in {timeout}s")

    def _sees_everything(self, s: SentinelProcess) -> bool:
        with s.client() as c:
            state = c.sentinel_master(self.master_name)
        return (
            int(state.get("num-slaves", 0)) >= self.replicas
            and int(state.get("num-other-sentinels", 0)) >= self.sentinels - 1
        )

    def master_address(self) -> tuple[str, int]:
        for s in self.watchers:
            if not s.running:
                continue
            with s.client() as c:
                host, port = c.sentinel_get_master_addr_by_name(self.master_name)
            return host.decode() if isinstance(host, bytes) else str(host), int(port)
        raise RuntimeError("no sentinel is running")

    def master(self) -> RedisServer:
        _, port = self.master_address()
        return next(s for s in self.servers if s.port == port)

    def failovers(self) -> int:
        """How many times the master was switched (``+switch-master`` in the sentinels' logs, the most any
        one sentinel saw). More than the kills means a sentinel took a live master for dead: a second
        failover, with the first promoted replica left a master until a sentinel converts it."""
        counts = []
        for s in self.watchers:
            assert s.workdir is not None
            log = s.workdir / "redis.log"
            counts.append(log.read_text(errors="replace").count("+switch-master") if log.exists() else 0)
        return max(counts, default=0)

    def kill_master(self, require_synced: bool = True) -> RedisServer:
        """SIGKILL the current master (it stays down). By default first check that every replica has
        finished its initial sync (else the promoted one would be empty: not the failover meant)."""
        if require_synced and (behind := self.unsynced_replicas()):
            raise RuntimeError(f"replicas {behind} are not in sync with the master: a kill now loses all")
        m = self.master()
        m.kill()
        return m

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> tuple[str, int]:
        """Wait until every running sentinel names a master other than ``old_port`` that answers as one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ports = set()
                for s in self.watchers:
                    if s.running:
                        with s.client() as c:
                            ports.add(int(c.sentinel_get_master_addr_by_name(self.master_name)[1]))
                if len(ports) == 1 and old_port not in ports:
                    new = next(x for x in self.servers if x.port in ports)
                    with new.client() as c:
                        if c.info("replication")["role"] == "master":
                            return new.host, new.port
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no failover away from port {old_port} within {timeout}s")

    def stop(self) -> None:
        for s in self.watchers:
            s.cleanup()
        for n in self.servers:
            n.cleanup()

    def __enter__(self) -> RedisSentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
