"""The operator's whole Kubernetes client: ``/scale`` of any target, the QueueConsumer's status, Secrets,
the owned Deployment and discovery. Nothing of Redis.

A small asyncio client over aiohttp (kopf's own HTTP stack): one connection pool for every resource the
operator serves, no thread per call, and explicit patch types. Credentials come from the in-cluster
ServiceAccount (token re-read as the kubelet rotates it) or the kubeconfig, as kopf's own login does.

Every request path is built by ``api_path`` from separate segments, each checked and percent-escaped as
the kubernetes client escapes its path parameters: a name from a QueueConsumer (``../../victim/secrets/db``)
can never leave its own segment, whatever the schema let through. ``request`` takes only such paths.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import dataclasses
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NewType

import aiohttp
import kopf
import yarl

from tide_operator import metrics
from tide_operator.deletion_cost import ANNOTATION as DELETION_COST
from tide_operator.spec import GROUP, PLURAL, VERSION, SecretKeyRef, TargetRef

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")

ApiPath = NewType("ApiPath", str)
# Kubernetes names, resources, groups and versions: letters, digits, '-', '.', '_' (Secret keys never
# go into a path). Dot segments are refused outright: escaping leaves "..", and servers resolve it.
_SEGMENT = re.compile(r"[A-Za-z0-9][-A-Za-z0-9._]*")


def api_path(*segments: str) -> ApiPath:
    """``/seg1/seg2/...`` from segments that must each stay one segment; ValueError otherwise."""
    for seg in segments:
        if not _SEGMENT.fullmatch(seg) or seg in (".", ".."):
            raise ValueError(f"refusing an API path segment {seg!r}: not a Kubernetes name")
    return ApiPath("/" + "/".join(urllib.parse.quote(seg, safe="") for seg in segments))


def group_version_path(api_version: str) -> tuple[str, ...]:
    """``("apis", group, version)`` or ``("api", version)`` for the core group."""
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return ("apis", group, version)
    return ("api", api_version)


class KubeError(Exception):
    """The API server refused a request; ``message`` is its own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    @staticmethod
    def of(status: int, message: str) -> KubeError:
        kind = {404: NotFound, 409: Conflict}.get(status, KubeError)
        return kind(status, message)


class NotFound(KubeError):
    """404: the object (or its kind, or the Secret's key) does not exist."""


class Conflict(KubeError):
    """409: it exists already (create), or changed meanwhile (update)."""


class FencedOff(KubeError):
    """Not sent: the loop's shard lease is no longer this replica's to act on (``WRITE_FENCE``)."""


# Set in each loop task's context by a sharded fleet: true while the loop's shard lease is valid. Every
# write of that task checks it just before it is sent, so a loop that lags behind its event loop (or a
# process resumed after a stall) never writes once another replica may hold the shard, whenever the
# watchdog gets to stop it. Lease writes (their own client, another task) carry no fence.
WRITE_FENCE: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "tide_write_fence", default=None
)


def connection_info() -> kopf.ConnectionInfo:
    """Where the API server is and how to speak to it, for this client and kopf's (``handlers.login``): in a
    pod, its ServiceAccount (the token file, the cluster's CA, ``KUBERNETES_SERVICE_HOST``); elsewhere the
    current context of ``$KUBECONFIG`` or ``~/.kube/config`` (a token, a client certificate or basic auth,
    as kopf's own login reads them; no exec credential plugins: give such a cluster a token).

    No Kubernetes client library for it: the image holds none, and kopf imports one wherever one is
    installed (16 MB of the operator's memory, 125 MB of files, for two file reads)."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port:  # as client-go does in a pod: no DNS lookup on the way to the API server
            bracketed = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{bracketed}:{port}")
        return info
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError(
            "no credentials: not in a pod with a ServiceAccount token, and no kubeconfig "
            "($KUBECONFIG or ~/.kube/config)"
        )
    # kopf reads file paths as they are written; kubectl reads a relative one from the kubeconfig's folder
    first = (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)[0]
    folder = Path(os.path.expanduser(first)).parent

    def beside(path: Any) -> Any:
        return str(folder / os.fsdecode(path)) if path and not os.path.isabs(path) else path

    return dataclasses.replace(
        info,
        ca_path=beside(info.ca_path),
        certificate_path=beside(info.certificate_path),
        private_key_path=beside(info.private_key_path),
    )


# Connections to the API server per lane. Scale writes have their own, so a burst's /scale PATCHes never
# queue behind status writes, Deployment reads and the periodic re-reads of thousands of resources on the
# client side (all of them shared one pool of 64 before).
LANES = {"scale": 32, "other": 64}


class Kube:
    def __init__(self) -> None:
        info = connection_info()
        self.in_cluster = SA_TOKEN.exists()  # what login_with_service_account went by
        self.server = str(info.server).rstrip("/")
        self._ssl = info.as_ssl_context()
        self._auth: str | None = info.as_http_headers().get("Authorization")
        self._token_read = time.monotonic()
        self._sessions: dict[str, aiohttp.ClientSession] = {}  # by lane (LANES)
        self._plurals: dict[tuple[str, str], str] = {}
        self._scalable: dict[tuple[str, str], bool] = {}
        self._discovery = asyncio.Lock()  # a thousand daemons starting at once need one discovery GET

    def _headers(self) -> dict[str, str]:
        if self.in_cluster and time.monotonic() - self._token_read > 60 and SA_TOKEN.exists():
            self._auth = "Bearer " + SA_TOKEN.read_text().strip()
            self._token_read = time.monotonic()
        return {"Authorization": self._auth} if self._auth else {}

    async def request(
        self,
        method: str,
        path: ApiPath,
        body: Any = None,
        content_type: str = "application/merge-patch+json",
        resource: str = "other",
        parse: bool = True,
    ) -> dict[str, Any]:
        """The answer as JSON (``parse=False``: read and dropped, e.g. the whole object a status PATCH
        echoes, ``managedFields`` and all)."""
        lane = "scale" if method == "PATCH" and resource == "scale" else "other"
        session = self._sessions.get(lane)
        if session is None:
            session = self._sessions[lane] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=LANES[lane]),
                # waiting for a connection is not the server being slow: only the socket phases are
                # bounded. A bound on the whole call (60 s before) failed 9,896 of 10,000 first polls when
                # 10,000 loops started at once (20,000 requests queued for 64 connections), and each
                # failure posted a Warning event: more writes for the server that was behind.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=10),
            )
        fence = WRITE_FENCE.get() if method != "GET" else None
        if fence is not None and not fence():
            raise FencedOff(0, f"{method} {resource}: this replica's shard lease ran out; not sent")
        metrics.KUBE_REQUESTS.labels(method, resource).inc()
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        with metrics.KUBE_SECONDS.labels(method, resource).time():
            # encoded=True: the path is already escaped, and must reach the server exactly as built
            url = yarl.URL(self.server + path, encoded=True)
            async with session.request(method, url, data=data, headers=headers) as resp:
                text = await resp.text()
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise KubeError.of(resp.status, message)
            result: dict[str, Any] = json.loads(text) if text and parse else {}
            return result

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    # --- /scale of any workload -----------------------------------------------------------------------

    async def _plural(self, target: TargetRef) -> str:
        key = (target.api_version, target.kind)
        if key in self._plurals:
            return self._plurals[key]
        async with self._discovery:
            if key not in self._plurals:
                doc = await self.request(
                    "GET", api_path(*group_version_path(target.api_version)), resource="discovery"
                )
                names = {res.get("name", "") for res in doc.get("resources", [])}
                for res in doc.get("resources", []):
                    if res.get("kind") == target.kind and "/" not in res.get("name", ""):
                        self._plurals[key] = res["name"]
                        self._scalable[key] = f"{res['name']}/scale" in names
                        break
                else:
                    raise NotFound(404, f"{target.api_version} has no kind {target.kind}")
        return self._plurals[key]

    async def has_scale(self, target: TargetRef) -> bool:
        """Whether discovery lists a ``/scale`` subresource for the target's kind (NotFound: no such kind)."""
        await self._plural(target)
        return self._scalable[(target.api_version, target.kind)]

    async def scale_path(self, namespace: str, target: TargetRef) -> ApiPath:
        plural = await self._plural(target)
        gv = group_version_path(target.api_version)
        return api_path(*gv, "namespaces", namespace, plural, target.name, "scale")

    async def get_replicas(self, namespace: str, target: TargetRef) -> int:
        scale = await self.request("GET", await self.scale_path(namespace, target), resource="scale")
        return int(scale.get("spec", {}).get("replicas") or 0)

    async def set_replicas(self, namespace: str, target: TargetRef, replicas: int) -> int:
        path = await self.scale_path(namespace, target)
        scale = await self.request("PATCH", path, {"spec": {"replicas": replicas}}, resource="scale")
        return int(scale.get("spec", {}).get("replicas") or 0)

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        path = api_path("apis", "apps", "v1", "namespaces", namespace, "deployments", name)
        return await self.request("GET", path, resource="deployments")

    async def set_pod_deletion_cost(self, namespace: str, pod: str, cost: int) -> None:
        """Annotate one pod with its deletion cost (merge patch of metadata.annotations only)."""
        path = api_path("api", "v1", "namespaces", namespace, "pods", pod)
        body = {"metadata": {"annotations": {DELETION_COST: str(cost)}}}
        await self.request("PATCH", path, body, resource="pods")

    # --- the QueueConsumer ----------------------------------------------------------------------------

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = api_path("apis", GROUP, VERSION, "namespaces", namespace, PLURAL, name, "status")
        await self.request("PATCH", path, {"status": status}, resource="status", parse=False)

    async def secret_value(self, namespace: str, ref: SecretKeyRef) -> str:
        path = api_path("api", "v1", "namespaces", namespace, "secrets", ref.name)
        secret = await self.request("GET", path, resource="secrets")
        data = secret.get("data") or {}
        if ref.key not in data:
            raise NotFound(404, f"Secret {ref.name} has no key {ref.key}")
        return base64.b64decode(data[ref.key]).decode()

    # --- Deployments the operator owns ----------------------------------------------------------------

    async def apply_deployment(self, namespace: str, manifest: dict[str, Any]) -> None:
        """Create the Deployment, or bring its template and labels up to date without touching replicas."""
        name = manifest["metadata"]["name"]
        collection = ("apis", "apps", "v1", "namespaces", namespace, "deployments")
        try:
            await self.request(
                "POST",
                api_path(*collection),
                manifest,
                content_type="application/json",
                resource="deployments",
            )
        except Conflict:
            patch = {"metadata": manifest["metadata"], "spec": dict(manifest["spec"])}
            patch["spec"].pop("replicas", None)
            await self.request("PATCH", api_path(*collection, name), patch, resource="deployments")

    # --- Leases of the shards (tide_operator.sharding) ------------------------------------------------

    async def list_leases(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        path = api_path("apis", "coordination.k8s.io", "v1", "namespaces", namespace, "leases")
        query = urllib.parse.urlencode({"labelSelector": selector})
        doc = await self.request("GET", ApiPath(f"{path}?{query}"), resource="leases")
        items: list[dict[str, Any]] = doc.get("items") or []
        return items

    async def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        """Create a Lease; Conflict when it exists (another replica created it first)."""
        path = api_path("apis", "coordination.k8s.io", "v1", "namespaces", namespace, "leases")
        return await self.request("POST", path, lease, content_type="application/json", resource="leases")

    async def replace_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        """Replace a Lease (PUT) at the ``metadata.resourceVersion`` it carries: Conflict when another
        replica wrote it since, so two replicas can never both take one lease."""
        name = lease["metadata"]["name"]
        path = api_path("apis", "coordination.k8s.io", "v1", "namespaces", namespace, "leases", name)
        return await self.request("PUT", path, lease, content_type="application/json", resource="leases")
