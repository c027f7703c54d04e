"""The Kubernetes API as the kubernetes source uses it: list and watch pods, get a node — raw JSON.

Built on the official ``kubernetes_asyncio`` client for what it does well (in-cluster config with
service-account token rotation, kubeconfig with every auth plugin, TLS), but objects stay the API's
JSON: the client's model classes would rename every field and drop the ones they do not know, and
the pod accounting (:mod:`otlp_meter.sources.k8s_pods`) reads the API's own shape.

Errors: :class:`KubeApiError` (an HTTP error status, or a watch ``ERROR`` event) and its
:class:`ResourceGoneError` (410: the resourceVersion or continue token is too old; relist).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from kubernetes_asyncio import client as k8s

# kubernetes_asyncio (with aiohttp) costs ~0.35 s and ~60 MiB to import: it is imported when a
# client is made, never by merely configuring (or not configuring) the kubernetes source.

Obj = dict[str, Any]

WATCH_CONNECT_TIMEOUT = 10.0
# Beyond the server-side watch timeout: a watch that stays silent this long is dead.
WATCH_READ_MARGIN = 30.0
REQUEST_TIMEOUT = 60.0
MAX_WATCH_LINE = 64 * 1024 * 1024


class KubeApiError(Exception):
    """The API server answered with an error (``status`` is the HTTP status or the Status code)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status


class ResourceGoneError(KubeApiError):
    """410 Gone / Expired: the resourceVersion (or continue token) is too old. List again."""


def _error(status: int, body: bytes) -> KubeApiError:
    message = body[:300].decode("utf-8", "replace")
    try:
        parsed = orjson.loads(body)
        if isinstance(parsed, dict):
            message = str(parsed.get("message") or parsed.get("reason") or message)
            status = int(parsed.get("code") or status)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        pass
    return ResourceGoneError(status, message) if status == 410 else KubeApiError(status, message)


class KubeClient:
    """Raw access to pods and nodes. Use :meth:`connect`; close with :meth:`close`."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        from kubernetes_asyncio import client as k8s

        self._api_client = api_client
        self._core = k8s.CoreV1Api(api_client)

    @classmethod
    async def connect(
        cls,
        *,
        api_url: str | None = None,
        token: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
    ) -> KubeClient:
        """``api_url`` (+ ``token``) talks to that server directly (tests, ``kubectl proxy``); else
        ``kubeconfig`` (a path) or, inside a pod, the in-cluster service account; else the default
        kubeconfig ($KUBECONFIG or ~/.kube/config)."""
        from kubernetes_asyncio import client as k8s
        from kubernetes_asyncio import config as k8s_config

        configuration = k8s.Configuration()
        if api_url:
            configuration.host = api_url.rstrip("/")
            if token:
                configuration.api_key = {"BearerToken": token}
                configuration.api_key_prefix = {"BearerToken": "Bearer"}
        elif kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
            await k8s_config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
        return cls(k8s.ApiClient(configuration))

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._api_client.close()

    async def _call(self, namespace: str | None, **params: Any) -> Any:
        if namespace:
            return await self._core.list_namespaced_pod(namespace, _preload_content=False, **params)
        return await self._core.list_pod_for_all_namespaces(_preload_content=False, **params)

    async def list_pods(
        self,
        namespace: str | None,
        *,
        field_selector: str | None,
        label_selector: str | None,
        limit: int,
        continue_token: str | None = None,
    ) -> Obj:
        """One page of a pod list: ``metadata.resourceVersion`` / ``continue`` and ``items``."""
        response = await self._call(
            namespace,
            field_selector=field_selector or None,
            label_selector=label_selector or None,
            limit=limit,
            _continue=continue_token,
            _request_timeout=REQUEST_TIMEOUT,
        )
        async with response:
            body = await response.read()
            if response.status != 200:
                raise _error(response.status, body)
        page = orjson.loads(body)
        if not isinstance(page, dict):
            raise KubeApiError(response.status, "pod list is not an object")
        return page

    async def watch_pods(
        self,
        namespace: str | None,
        *,
        field_selector: str | None,
        label_selector: str | None,
        resource_version: str,
        timeout_seconds: int,
    ) -> AsyncIterator[Obj]:
        """Watch events (``{"type": ..., "object": ...}``) from ``resource_version``, bookmarks included,
        until the server ends the watch. A 410 (as the status or an ERROR event) raises
        :class:`ResourceGoneError`; other ERROR events raise :class:`KubeApiError`."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(
            connect=WATCH_CONNECT_TIMEOUT,
            sock_connect=WATCH_CONNECT_TIMEOUT,
            sock_read=timeout_seconds + WATCH_READ_MARGIN,
        )
        response = await self._call(
            namespace,
            field_selector=field_selector or None,
            label_selector=label_selector or None,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_seconds,
            watch=True,
            _request_timeout=timeout,
        )
        async with response:
            if response.status != 200:
                raise _error(response.status, await response.read())
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                if len(buffer) > MAX_WATCH_LINE:
                    raise KubeApiError(0, "watch event larger than 64 MiB")
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _watch_event(line)
            if buffer.strip():
                yield _watch_event(buffer)

    async def get_node(self, name: str) -> Obj:
        """The node object (for its labels)."""
        response: Any = await self._core.read_node(
            name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        async with response:
            body = await response.read()
            if response.status != 200:
                raise _error(response.status, body)
        node = orjson.loads(body)
        if not isinstance(node, dict):
            raise KubeApiError(response.status, "node is not an object")
        return node


def _watch_event(line: bytes) -> Obj:
    event = orjson.loads(line)
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise KubeApiError(0, f"malformed watch event: {line[:200]!r}")
    if event.get("type") == "ERROR":
        status = event["object"]
        raise _error(int(status.get("code") or 0), orjson.dumps(status))
    return event
