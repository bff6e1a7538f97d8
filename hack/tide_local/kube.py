"""A small JSON-over-HTTPS Kubernetes client for the node agent: raw dicts in and out, explicit patch types
and a streaming watch, so the agent does not depend on the generated client's models or call conventions.
Credentials come from a kubeconfig (client certificate or bearer token) through ``kubernetes.config``."""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import urllib3

JSON = dict[str, Any]


class KubeError(Exception):
    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        self.body = body
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{what}: HTTP {status}: {message}")


class Kube:
    def __init__(self, kubeconfig: Path | str) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        self.server: str = cfg.host.rstrip("/")
        self.ca_file: str | None = cfg.ssl_ca_cert
        self.headers: dict[str, str] = {"Accept": "application/json"}
        for key in ("authorization", "BearerToken"):
            value = cfg.api_key.get(key)
            if value:
                prefix = cfg.api_key_prefix.get(key)
                self.headers["Authorization"] = f"{prefix} {value}" if prefix else str(value)
                break
        ctx = (
            ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        )
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self.pool = urllib3.PoolManager(maxsize=32, ssl_context=ctx)

    def _url(self, path: str, params: dict[str, Any] | None) -> str:
        url = self.server + path
        if params:
            clean = {
                k: (str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in params.items()
                if v is not None
            }
            url += "?" + urllib.parse.urlencode(clean)
        return url

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 15.0,
    ) -> JSON:
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        response = self.pool.request(
            method,
            self._url(path, params),
            body=data,
            headers=headers,
            timeout=urllib3.Timeout(total=timeout),
            retries=False,
        )
        text = response.data.decode(errors="replace")
        if response.status >= 400:
            raise KubeError(response.status, text, f"{method} {path}")
        result: JSON = json.loads(text) if text else {}
        return result

    def get(self, path: str, **params: Any) -> JSON:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> JSON:
        return self.request("POST", path, body)

    def merge_patch(self, path: str, body: Any) -> JSON:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, body: Any = None) -> JSON:
        return self.request("DELETE", path, body)

    def watch(self, path: str, params: dict[str, Any], timeout_seconds: int = 60) -> Iterator[JSON]:
        """Yield watch events (``{"type": ..., "object": {...}}``) until the server ends the watch."""
        params = {**params, "watch": "true", "timeoutSeconds": timeout_seconds}
        response = self.pool.request(
            "GET",
            self._url(path, params),
            headers=self.headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 15),
            retries=False,
        )
        try:
            if response.status >= 400:
                raise KubeError(response.status, response.read().decode(errors="replace"), f"WATCH {path}")
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()
