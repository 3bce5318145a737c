"""A test Kubernetes API server that speaks the real wire protocol (aiohttp).

Serves what peerlink's Kubernetes strategy uses, the way kube-apiserver does:

* ``GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices`` and
  ``GET /api/v1/namespaces/NS/endpoints``: list (``{"kind": "...List", "metadata":
  {"resourceVersion": ...}, "items": [...]}``) and, with ``watch=true``, a chunked
  stream of newline-delimited ``{"type": ..., "object": ...}`` events: replay from
  ``resourceVersion`` out of the history, synthetic ADDED without one, ``BOOKMARK``
  every ``bookmark_interval`` when ``allowWatchBookmarks=true``, ``ERROR`` with a 410
  ``Expired`` Status for a compacted resourceVersion, the stream ended after
  ``timeoutSeconds``; objects that start or stop matching a selector arrive as
  ADDED / DELETED, as the watch cache sends them.
* ``GET /api/v1/namespaces/NS/endpoints/NAME`` (and the slices' equivalent).
* ``labelSelector`` (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma = and) and
  ``fieldSelector`` (``metadata.name``, ``metadata.namespace``).
* Bearer auth, scheme compared case-insensitively (the in-cluster loader sends
  ``bearer``); a wrong or missing token gets a 401 Status. ``forbid()`` answers 403
  Status with the apiserver's RBAC message. ``fail()`` answers 500 (or any code)
  Status. ``delay`` slows every response. ``serve_slices = False`` makes the slices
  path a plain-text ``404 page not found`` like an API server without
  ``discovery.k8s.io/v1``.
* TLS with a ``trustme`` CA (``start(tls=True)``; ``ca_path`` for the client).

Test controls (call them on the server's event loop): ``put`` (ADDED or MODIFIED),
``delete``, ``compact``, ``expire_watches`` (ERROR 410 on open watches, then close),
``drop_watches`` (abort open watch connections mid-stream), ``fail``, ``forbid``;
``requests`` records (method, path with query, headers) of every request.

Run as a program (``python tests/support/k8s_api.py --host H --port P [--tls DIR]``)
it prints ``{"port": P, "ca": ...}`` on stdout and obeys JSON commands on stdin, one
per line (``{"op": "put", "resource": "endpointslices", "object": {...}}``,
``{"op": "delete", ...}``, ``{"op": "compact"}``, ...), answering ``{"ok": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import ssl
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

__all__ = [
    "FakeKubeAPI",
    "RecordedRequest",
    "endpoint",
    "endpoint_slice",
    "endpoints_object",
    "status_body",
    "write_kubeconfig",
]

GROUPS = {
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
    "endpoints": ("v1", "Endpoints"),
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path_qs: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    at: float  # time.monotonic()


@dataclass
class _Watcher:
    resource: str
    namespace: str
    labels: str | None
    fields: str | None
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    response: web.StreamResponse | None = None
    request: web.Request | None = None


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }
    if details:
        body["details"] = details
    return body


# -- selectors ------------------------------------------------------------------------


def label_match(selector: str | None, labels: Mapping[str, str]) -> bool:
    if not selector:
        return True
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "==" in term or "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_match(selector: str | None, obj: Mapping[str, Any]) -> bool:
    if not selector:
        return True
    meta = obj.get("metadata") or {}
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        neg = "!=" in term
        k, v = term.split("!=" if neg else ("==" if "==" in term else "="), 1)
        key = k.strip()
        if key not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f'field label not supported: {key}')
        actual = meta.get(key.split(".", 1)[1])
        if (actual == v.strip()) == neg:
            return False
    return True


# -- object builders ------------------------------------------------------------------


def endpoint(ip: str, *, ready: bool | None = True, serving: bool | None = None,
             terminating: bool | None = False, hostname: str | None = None,
             pod: str | None = None, node: str = "node-1") -> dict[str, Any]:
    """One ``endpoints[]`` entry of an EndpointSlice."""
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    conditions["serving"] = ready if serving is None else serving
    if terminating is not None:
        conditions["terminating"] = terminating
    ep: dict[str, Any] = {"addresses": [ip], "conditions": conditions, "nodeName": node}
    if hostname:
        ep["hostname"] = hostname
    if pod:
        ep["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "default", "uid": f"uid-{pod}"}
    return ep


def endpoint_slice(name: str, service: str, endpoints: Sequence[Mapping[str, Any]],
                   *, ports: Sequence[tuple[str | None, int]] = (("peerlink", 4370),),
                   namespace: str = "default", address_type: str = "IPv4",
                   labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A ``discovery.k8s.io/v1`` EndpointSlice as the EndpointSlice controller writes it."""
    all_labels = {"kubernetes.io/service-name": service,
                  "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    all_labels.update(labels or {})
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": all_labels,
                     "generateName": f"{service}-",
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                                          "uid": f"uid-svc-{service}", "controller": True,
                                          "blockOwnerDeletion": True}]},
        "addressType": address_type,
        "endpoints": [dict(e) for e in endpoints],
        "ports": [{"name": n, "port": p, "protocol": "TCP"} if n is not None
                  else {"port": p, "protocol": "TCP"} for n, p in ports],
    }


def endpoints_object(service: str, ready: Iterable[tuple[str, str | None]] = (),
                     not_ready: Iterable[tuple[str, str | None]] = (),
                     *, ports: Sequence[tuple[str | None, int]] = (("peerlink", 4370),),
                     namespace: str = "default",
                     labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A core/v1 Endpoints object; addresses as (ip, pod name or None)."""

    def addr(ip: str, pod: str | None) -> dict[str, Any]:
        a: dict[str, Any] = {"ip": ip, "nodeName": "node-1"}
        if pod:
            a["targetRef"] = {"kind": "Pod", "name": pod, "namespace": namespace}
        return a

    subset: dict[str, Any] = {
        "ports": [{"name": n, "port": p, "protocol": "TCP"} if n is not None
                  else {"port": p, "protocol": "TCP"} for n, p in ports],
    }
    r = [addr(ip, pod) for ip, pod in ready]
    nr = [addr(ip, pod) for ip, pod in not_ready]
    if r:
        subset["addresses"] = r
    if nr:
        subset["notReadyAddresses"] = nr
    return {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": service, "namespace": namespace, "labels": dict(labels or {})},
        "subsets": [subset] if (r or nr) else [],
    }


def write_kubeconfig(path: Path, host: str, *, token: str = "test-token",
                     ca_path: str | None = None, namespace: str = "default") -> Path:
    """A minimal kubeconfig (JSON is valid YAML) pointing at ``host``."""
    cluster: dict[str, Any] = {"server": host}
    if ca_path:
        cluster["certificate-authority"] = ca_path
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test",
                                                   "namespace": namespace}}],
    }
    path.write_text(json.dumps(doc, indent=1))
    return path


# -- the server -----------------------------------------------------------------------


class FakeKubeAPI:
    """See the module docstring. ``await start()`` -> port; ``await close()``."""

    def __init__(self, *, token: str | None = "test-token", bookmark_interval: float = 0.5,
                 namespaces: Iterable[str] = ("default",)) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.namespaces = set(namespaces)
        self.serve_slices = True
        self.delay = 0.0
        self.rv = 100
        self.compacted_rv = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        # (rv, resource, namespace, old, new, deleted object)
        self.history: list[tuple[int, str, str, dict[str, Any] | None, dict[str, Any] | None,
                                 dict[str, Any] | None]] = []
        self.requests: list[RecordedRequest] = []
        self.watchers: list[_Watcher] = []
        self._failures: list[tuple[int, int | None, str | None]] = []  # (code, remaining, verb)
        self._forbidden: set[tuple[str, str]] = set()  # (resource, verb)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0
        self.host = "127.0.0.1"
        self.scheme = "http"
        self.ca_path: str | None = None
        self.change_times: list[float] = []  # time.monotonic() of each put/delete
        self.bookmarks_sent: list[int] = []  # resourceVersion of each BOOKMARK written

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    tls_dir: Path | None = None) -> int:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/endpoints", self._collection("endpoints"))
        app.router.add_get("/api/v1/namespaces/{ns}/endpoints/{name}", self._item("endpoints"))
        app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                           self._collection("endpointslices"))
        app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}",
                           self._item("endpointslices"))
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        ssl_ctx = self._tls(tls_dir, host) if tls_dir is not None else None
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_ctx)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        self.host = host
        return self.port

    def _tls(self, tls_dir: Path, host: str) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "::1", "localhost", host, "kubernetes.default.svc")
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ssl_ctx)
        tls_dir.mkdir(parents=True, exist_ok=True)
        self.ca_path = str(tls_dir / "ca.crt")
        ca.cert_pem.write_to_path(self.ca_path)
        self.scheme = "https"
        return ssl_ctx

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def close(self) -> None:
        for w in list(self.watchers):
            w.queue.put_nowait(None)
        for t in list(self._tasks):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- test controls --------------------------------------------------------------

    def put(self, resource: str, obj: Mapping[str, Any], *, notify: bool = True) -> int:
        """Create or replace an object (ADDED or MODIFIED); returns its resourceVersion.
        ``notify=False``: open watches miss the event (as if lost to a compaction)."""
        obj = copy.deepcopy(dict(obj))
        meta = obj.setdefault("metadata", {})
        ns = meta.setdefault("namespace", "default")
        self.namespaces.add(ns)
        key = (resource, ns, meta["name"])
        old = self.objects.get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", f"uid-{resource}-{meta['name']}")
        self.objects[key] = obj
        self._record(resource, ns, old, obj, notify=notify)
        return self.rv

    def delete(self, resource: str, name: str, namespace: str = "default", *,
               notify: bool = True) -> int:
        old = self.objects.pop((resource, namespace, name))
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._record(resource, namespace, old, None, gone, notify=notify)
        return self.rv

    def compact(self) -> None:
        """Forget history: watches from an older resourceVersion get ERROR 410."""
        self.compacted_rv = self.rv
        self.history.clear()

    def expire_watches(self) -> int:
        """Send ERROR 410 Expired on every open watch, then end it."""
        n = 0
        for w in list(self.watchers):
            w.queue.put_nowait({"type": "ERROR", "object": status_body(
                410, "Expired", "The resourceVersion for the provided watch is too old.")})
            w.queue.put_nowait(None)
            n += 1
        return n

    def drop_watches(self) -> int:
        """Abort every open watch connection mid-stream (no terminating chunk)."""
        n = 0
        for w in list(self.watchers):
            if w.request is not None and w.request.transport is not None:
                w.request.transport.abort()
                n += 1
        return n

    def end_watches(self) -> int:
        """End every open watch cleanly, as the server does at timeoutSeconds."""
        for w in list(self.watchers):
            w.queue.put_nowait(None)
        return len(self.watchers)

    def fail(self, code: int = 500, count: int | None = 1, verb: str | None = None) -> None:
        """Answer the next ``count`` requests (``None``: all until ``heal()``) of ``verb``
        (``list``, ``watch``, ``get``; ``None``: any) with an error Status."""
        self._failures.append((code, count, verb))

    def forbid(self, resource: str, *verbs: str) -> None:
        for v in verbs or ("get", "list", "watch"):
            self._forbidden.add((resource, v))

    def heal(self) -> None:
        self._failures.clear()
        self._forbidden.clear()

    def requests_for(self, resource: str, *, watch: bool | None = None) -> list[RecordedRequest]:
        out = []
        for r in self.requests:
            if not r.path.startswith(("/api/", "/apis/")) or resource not in r.path.split("/"):
                continue
            if watch is not None and (r.query.get("watch") == "true") != watch:
                continue
            out.append(r)
        return out

    # -- internals ------------------------------------------------------------------

    def _record(self, resource: str, ns: str, old: dict[str, Any] | None,
                new: dict[str, Any] | None, gone: dict[str, Any] | None = None, *,
                notify: bool = True) -> None:
        self.change_times.append(time.monotonic())
        self.history.append((self.rv, resource, ns, old, new, gone))
        for w in list(self.watchers if notify else ()):
            if w.resource == resource and w.namespace == ns:
                ev = self._event_for(w, old, new, gone)
                if ev is not None:
                    w.queue.put_nowait(ev)

    def _matches(self, w: _Watcher, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return label_match(w.labels, labels) and field_match(w.fields, obj)

    def _event_for(self, w: _Watcher, old: dict[str, Any] | None, new: dict[str, Any] | None,
                   gone: dict[str, Any] | None) -> dict[str, Any] | None:
        was, now = self._matches(w, old), self._matches(w, new)
        if new is None:
            return {"type": "DELETED", "object": gone} if was else None
        if now and was:
            return {"type": "MODIFIED", "object": new}
        if now:
            return {"type": "ADDED", "object": new}
        if was:  # stopped matching the selector: the watch cache sends DELETED
            return {"type": "DELETED", "object": new}
        return None

    def _authorize(self, request: web.Request, resource: str, verb: str, ns: str) -> web.Response | None:
        if self.token is not None:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or token != self.token:
                return self._status(401, "Unauthorized", "Unauthorized")
        if (resource, verb) in self._forbidden:
            group = "discovery.k8s.io" if resource == "endpointslices" else ""
            what = f"{resource}.{group}" if group else resource
            return self._status(
                403, "Forbidden",
                f'{what} is forbidden: User "system:serviceaccount:{ns}:default" cannot {verb} '
                f'resource "{resource}" in API group "{group}" in the namespace "{ns}"',
                {"kind": resource, **({"group": group} if group else {})})
        for i, (code, remaining, fverb) in enumerate(self._failures):
            if fverb is not None and fverb != verb:
                continue
            if remaining is not None:
                if remaining <= 1:
                    del self._failures[i]
                else:
                    self._failures[i] = (code, remaining - 1, fverb)
            return self._status(code, "InternalError" if code >= 500 else "Unknown",
                                f"injected failure {code}")
        return None

    @staticmethod
    def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> web.Response:
        return web.json_response(status_body(code, reason, message, details), status=code)

    def _note(self, request: web.Request) -> None:
        self.requests.append(RecordedRequest(
            request.method, request.path_qs, request.path, dict(request.query),
            dict(request.headers), time.monotonic()))

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        return web.Response(status=404, text="404 page not found\n")

    def _item(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            self._note(request)
            if self.delay:
                await asyncio.sleep(self.delay)
            ns, name = request.match_info["ns"], request.match_info["name"]
            if resource == "endpointslices" and not self.serve_slices:
                return web.Response(status=404, text="404 page not found\n")
            if (denied := self._authorize(request, resource, "get", ns)) is not None:
                return denied
            obj = self.objects.get((resource, ns, name))
            if obj is None:
                return self._status(404, "NotFound", f'{resource} "{name}" not found',
                                    {"name": name, "kind": resource})
            return web.json_response(obj)
        return handler

    def _collection(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            self._note(request)
            if self.delay:
                await asyncio.sleep(self.delay)
            ns = request.match_info["ns"]
            if resource == "endpointslices" and not self.serve_slices:
                return web.Response(status=404, text="404 page not found\n")
            watch = request.query.get("watch", "false").lower() in ("true", "1")
            verb = "watch" if watch else "list"
            if (denied := self._authorize(request, resource, verb, ns)) is not None:
                return denied
            labels = request.query.get("labelSelector")
            fields = request.query.get("fieldSelector")
            try:
                field_match(fields, {})
            except ValueError as exc:
                return self._status(400, "BadRequest", str(exc))
            if watch:
                return await self._watch(request, resource, ns, labels, fields)
            w = _Watcher(resource, ns, labels, fields)
            api_version, kind = GROUPS[resource]
            items = [o for (r, n, _), o in sorted(self.objects.items())
                     if r == resource and n == ns and self._matches(w, o)]
            return web.json_response({
                "kind": f"{kind}List", "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.rv)}, "items": items,
            })
        return handler

    async def _watch(self, request: web.Request, resource: str, ns: str,
                     labels: str | None, fields: str | None) -> web.StreamResponse:
        w = _Watcher(resource, ns, labels, fields, request=request)
        rv_text = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds", "0") or 0) or None
        bookmarks = request.query.get("allowWatchBookmarks", "false").lower() == "true"
        initial: list[dict[str, Any]] = []
        if rv_text in ("", "0"):
            initial = [{"type": "ADDED", "object": o} for (r, n, _), o in sorted(self.objects.items())
                       if r == resource and n == ns and self._matches(w, o)]
        else:
            try:
                rv = int(rv_text)
            except ValueError:
                return self._status(400, "BadRequest", f"invalid resource version: {rv_text}")
            if rv < self.compacted_rv:
                initial = [{"type": "ERROR", "object": status_body(
                    410, "Expired", f"too old resource version: {rv} ({self.compacted_rv})")}]
            else:
                for ev_rv, r, n, old, new, gone in self.history:
                    if ev_rv > rv and r == resource and n == ns:
                        ev = self._event_for(w, old, new, gone)
                        if ev is not None:
                            initial.append(ev)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        w.response = resp
        for ev in initial:
            w.queue.put_nowait(ev)
        if initial and initial[-1]["type"] == "ERROR":
            w.queue.put_nowait(None)
        self.watchers.append(w)
        deadline = time.monotonic() + timeout if timeout else None
        next_bookmark = time.monotonic() + self.bookmark_interval
        try:
            while True:
                now = time.monotonic()
                wait = next_bookmark - now if bookmarks else 3600.0
                if deadline is not None:
                    wait = min(wait, deadline - now)
                try:
                    item = await asyncio.wait_for(w.queue.get(), max(wait, 0.0))
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    if bookmarks and time.monotonic() >= next_bookmark:
                        next_bookmark = time.monotonic() + self.bookmark_interval
                        api_version, kind = GROUPS[resource]
                        item = {"type": "BOOKMARK", "object": {
                            "kind": kind, "apiVersion": api_version,
                            "metadata": {"resourceVersion": str(self.rv)}}}
                    else:
                        continue
                if item is None:
                    break
                await resp.write(json.dumps(item, separators=(",", ":")).encode() + b"\n")
                if item["type"] == "BOOKMARK":
                    self.bookmarks_sent.append(int(item["object"]["metadata"]["resourceVersion"]))
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if w in self.watchers:
                self.watchers.remove(w)
        return resp


# -- as a program (for node processes in network namespaces) --------------------------


async def _serve(args: argparse.Namespace) -> None:
    srv = FakeKubeAPI(token=args.token or None, bookmark_interval=args.bookmark_interval)
    await srv.start(args.host, args.port, tls_dir=Path(args.tls) if args.tls else None)
    print(json.dumps({"port": srv.port, "url": srv.url, "ca": srv.ca_path}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            if not line.strip():
                continue
            cmd = json.loads(line)
            op = cmd.pop("op")
            try:
                if op == "put":
                    result: Any = srv.put(cmd["resource"], cmd["object"])
                elif op == "delete":
                    result = srv.delete(cmd["resource"], cmd["name"], cmd.get("namespace", "default"))
                elif op in ("compact", "expire_watches", "drop_watches", "end_watches", "heal"):
                    result = getattr(srv, op)()
                elif op == "fail":
                    srv.fail(**cmd)
                    result = None
                elif op == "forbid":
                    srv.forbid(cmd["resource"], *cmd.get("verbs", ()))
                    result = None
                elif op == "requests":
                    result = [r.path_qs for r in srv.requests]
                else:
                    raise ValueError(f"unknown op {op!r}")
                print(json.dumps({"ok": True, "result": result}), flush=True)
            except Exception as exc:
                print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    finally:
        await srv.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls", default="", help="directory for ca.crt; serve HTTPS")
    p.add_argument("--token", default="test-token")
    p.add_argument("--bookmark-interval", type=float, default=0.5)
    asyncio.run(_serve(p.parse_args()))


if __name__ == "__main__":
    main()
