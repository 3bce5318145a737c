"""Kubernetes API discovery: EndpointSlices (or Endpoints), list then watch.

Imports discovery.base and errors; the ``kubernetes`` package (large, ~0.5 s to import)
only inside functions, so ``import peerlink`` never pays for it.

The requests go through ``kubernetes.aio`` (its configuration and kubeconfig loading,
auth headers, TLS, URL and query building, aiohttp session): the
``*_without_preload_content`` calls return the raw response, and this module reads the
status and the newline-delimited watch stream itself instead of using
``kubernetes.aio.watch.Watch``, because that helper ignores the HTTP status of the watch
request, silently retries one 410, turns non-JSON lines into strings, and deserialises
every event into pydantic models we would only turn back into dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigError, DiscoveryError, DiscoveryForbidden
from .base import Endpoint, LocalNode, Snapshot, Strategy, UrlOptions

__all__ = ["Kubernetes"]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
MODES: Final = ("ip", "hostname", "dns")
APIS: Final = ("endpointslices", "endpoints")
#: the in-cluster token is re-read this often (bound service-account tokens rotate)
TOKEN_REFRESH: Final = 60.0
_OPEN: Final = "(open)"  # pseudo event: the watch request was accepted (200)


def _import_client() -> None:
    import aiohttp  # noqa: F401
    import kubernetes.aio.client
    import kubernetes.aio.config  # noqa: F401


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclass(frozen=True, slots=True)
class _Resource:
    """What differs between the two APIs."""

    api: str  # "endpointslices" | "endpoints"
    group: str  # "discovery.k8s.io" | "" (core)
    path: str  # for messages: /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices


_RESOURCES: Final = {
    "endpointslices": _Resource("endpointslices", "discovery.k8s.io", "/apis/discovery.k8s.io/v1"),
    "endpoints": _Resource("endpoints", "", "/api/v1"),
}


class Kubernetes(Strategy):
    """Finds peers through the Kubernetes API: the pods behind a Service.

    It **lists, then watches** the Service's EndpointSlices (``discovery.k8s.io/v1``,
    the default) or its Endpoints (``api="endpoints"``, for clusters older than 1.21),
    so a pod that becomes ready is a candidate within milliseconds of the API server
    knowing it, not at the next poll. Built on ``kubernetes.aio`` (asyncio; no thread
    ever blocks).

    Assumes:
        * The pods run behind a Service (usually headless, ``clusterIP: None``) with a
          port named ``peerlink`` (or pass ``port=``), and ``publishNotReadyAddresses:
          false`` so readiness gates membership.
        * The pod's ServiceAccount may ``get``/``list``/``watch`` EndpointSlices (or
          Endpoints) in its namespace.

    Setup (``manifests/base`` has all of it)::

        apiVersion: rbac.authorization.k8s.io/v1
        kind: Role
        metadata: {name: peerlink-discovery}
        rules:
          - apiGroups: ["discovery.k8s.io"]
            resources: ["endpointslices"]
            verbs: ["get", "list", "watch"]
          - apiGroups: [""]
            resources: ["endpoints"]
            verbs: ["get", "list", "watch"]
        # + a RoleBinding of that Role to the pod's ServiceAccount, and
        # env PEERLINK_DISCOVERY="k8s://peerlink?port=peerlink"

    Options:
        ========================  ==================  =========================================
        option                    default             meaning
        ========================  ==================  =========================================
        ``service``               (one of these two)  the Service's name: selects its slices by
                                                      the ``kubernetes.io/service-name`` label
        ``selector``              (one of these two)  any label selector (``app=chat,tier=x``)
        ``namespace``             see below           the namespace to watch
        ``port``                  ``"peerlink"``      the port *name* in the Service, or a number
        ``mode``                  ``"ip"``            ``ip``: dial the pod IP; ``hostname``:
                                                      ``HOST.SUBDOMAIN.NS.svc.DOMAIN`` from the
                                                      endpoint's hostname (StatefulSets);
                                                      ``dns``: ``1-2-3-4.NS.pod.DOMAIN``
        ``api``                   ``endpointslices``  or ``endpoints`` (deprecated since 1.33)
        ``include_not_ready``     ``False``           also dial pods that are not ready
                                                      (terminating pods are never dialled)
        ``kubeconfig``            ``None``            a kubeconfig path (else in-cluster, else
                                                      ``$KUBECONFIG``, else ``~/.kube/config``)
        ``context``               ``None``            the kubeconfig context to use
        ``cluster_domain``        ``cluster.local``   for the ``hostname`` and ``dns`` modes
        ``watch_timeout``         ``300.0``           seconds a watch may last before the
                                                      server ends it (jittered up to x1.5);
                                                      it is then resumed, not re-listed
        ``request_timeout``       ``10.0``            seconds for a list (and to open a watch)
        ========================  ==================  =========================================

        The namespace defaults to the service account's namespace file
        (``/var/run/secrets/kubernetes.io/serviceaccount/namespace``), then the
        ``POD_NAMESPACE`` variable (downward API); if neither exists construction fails
        with a ``ConfigError`` naming both.

        Credentials: in-cluster (``KUBERNETES_SERVICE_HOST`` is set, token and CA from
        the service account directory; the token is re-read every minute and may end in
        a newline) unless ``kubeconfig`` is given; otherwise the kubeconfig found the way
        kubectl finds it. Test hooks (keyword only): ``configuration`` (a ready
        ``kubernetes.aio.client.Configuration``: used as is), ``environ`` (instead of
        ``os.environ``), ``service_account_dir`` (instead of the path above).

    URL form::

        k8s://SERVICE?namespace=NS&port=peerlink&mode=ip&api=endpointslices
        k8s://?selector=app%3Dchat&include_not_ready=true&kubeconfig=/path/config

    Empty and failure:
        * Empty (``frozenset()``) is authoritative: the Service exists and lists no
          ready, non-terminating endpoint (or nothing matches ``selector``).
        * A Service that does not exist (no slices and no Endpoints object of that
          name, which is also what a missing namespace looks like) is a
          ``DiscoveryError`` saying so, never "nobody".
        * 401/403 raise ``DiscoveryForbidden`` whose message and ``.rule`` name the exact
          RBAC rule (or credential) that is missing - never "nobody", which in
          libcluster disconnects whole clusters.
        * A 404 on the EndpointSlice resource (a cluster without
          ``discovery.k8s.io/v1``) raises an error suggesting ``api=endpoints``.
        * 5xx, 429, timeouts, TLS and connection errors raise ``DiscoveryError``.
        * Every failure keeps the last good snapshot (the runner backs off and calls
          ``watch()`` again, which lists afresh). A watch that the server ends or that
          drops mid-stream is resumed from the last resourceVersion without a
          re-list; a 410 Gone (expired resourceVersion) re-lists.
    """

    scheme = "k8s"

    def __init__(
        self,
        service: str | None = None,
        *,
        selector: str | None = None,
        namespace: str | None = None,
        port: str | int = "peerlink",
        mode: str = "ip",
        api: str = "endpointslices",
        include_not_ready: bool = False,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        cluster_domain: str = "cluster.local",
        watch_timeout: float = 300.0,
        request_timeout: float = 10.0,
        configuration: Any = None,
        environ: Mapping[str, str] | None = None,
        service_account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
    ) -> None:
        if (service is None) == (selector is None) or (service == "" or selector == ""):
            raise ConfigError(
                "Kubernetes discovery: give exactly one of service= (a Service name) "
                "or selector= (a label selector such as 'app=chat')"
            )
        if mode not in MODES:
            raise ConfigError(f"Kubernetes discovery: mode={mode!r}: expected one of {', '.join(MODES)}")
        if api not in APIS:
            raise ConfigError(f"Kubernetes discovery: api={api!r}: expected one of {', '.join(APIS)}")
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, int) and not 0 < port <= 65535:
            raise ConfigError(f"Kubernetes discovery: port={port}: expected a port name or 1..65535")
        if isinstance(port, str) and not port:
            raise ConfigError("Kubernetes discovery: port is empty: expected a port name or number")
        if not watch_timeout >= 1.0:
            raise ConfigError(f"Kubernetes discovery: watch_timeout={watch_timeout}: expected >= 1 s")
        if not request_timeout > 0:
            raise ConfigError(f"Kubernetes discovery: request_timeout={request_timeout}: expected > 0")
        self.service = service
        self.selector = selector
        self.port: str | int = port
        self.mode = mode
        self.api = api
        self.include_not_ready = include_not_ready
        self.kubeconfig = os.fspath(kubeconfig) if kubeconfig is not None else None
        self.context = context
        self.cluster_domain = cluster_domain.strip(".")
        self.watch_timeout = float(watch_timeout)
        self.request_timeout = float(request_timeout)
        self._configuration = configuration
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._sa_dir = Path(service_account_dir)
        self.namespace = namespace or self._default_namespace()
        self._resource = _RESOURCES[api]
        self._warned: set[str] = set()
        self._published: Snapshot | None = None
        #: what the last request asked and heard (``node.status()``, ``peerlink doctor``)
        self.last_lookup: str | None = None

    # -- construction helpers ---------------------------------------------------------

    def _default_namespace(self) -> str:
        ns_file = self._sa_dir / "namespace"
        with contextlib.suppress(OSError):
            ns = ns_file.read_text().strip()
            if ns:
                return ns
        ns = self._environ.get("POD_NAMESPACE", "").strip()
        if ns:
            return ns
        raise ConfigError(
            f"Kubernetes discovery: no namespace: pass namespace= (URL ?namespace=), or run "
            f"in a pod with the service account file {ns_file}, or set POD_NAMESPACE "
            "(downward API: fieldRef metadata.namespace)"
        )

    @classmethod
    def from_url(cls, url: str) -> Kubernetes:
        """``k8s://SERVICE?namespace=&port=&mode=&api=&selector=&include_not_ready=
        &kubeconfig=&context=&cluster_domain=&watch_timeout=&request_timeout=``."""
        opts = UrlOptions(url, cls.scheme)
        service = (opts.netloc + opts.path).strip("/") or None
        selector = opts.str("selector")
        kwargs: dict[str, Any] = {
            "selector": selector or None,
            "namespace": opts.str("namespace") or None,
            "port": opts.str("port", "peerlink") or "peerlink",
            "mode": opts.choice("mode", "ip", MODES),
            "api": opts.choice("api", "endpointslices", APIS),
            "include_not_ready": opts.bool("include_not_ready", False),
            "kubeconfig": opts.str("kubeconfig") or None,
            "context": opts.str("context") or None,
            "cluster_domain": opts.str("cluster_domain", "cluster.local") or "cluster.local",
            "watch_timeout": opts.float("watch_timeout", 300.0, minimum=0.999),
            "request_timeout": opts.float("request_timeout", 10.0),
        }
        opts.finish()
        if service is not None and selector:
            raise opts.error("give either a service name (k8s://SERVICE) or ?selector=, not both")
        if service is None and not selector:
            raise opts.error("expected k8s://SERVICE or k8s://?selector=LABEL%3DVALUE")
        try:
            return cls(service, **kwargs)
        except ConfigError as exc:
            raise opts.error(str(exc)) from None

    def describe(self) -> str:
        what = self.service if self.service is not None else f"?selector={self.selector}"
        return f"k8s://{what} ({self.api} in namespace {self.namespace})"

    def __repr__(self) -> str:
        return (
            f"Kubernetes(service={self.service!r}, selector={self.selector!r}, "
            f"namespace={self.namespace!r}, port={self.port!r}, mode={self.mode!r}, "
            f"api={self.api!r}, include_not_ready={self.include_not_ready!r})"
        )

    @property
    def label_selector(self) -> str | None:
        if self.selector is not None:
            return self.selector
        if self.api == "endpointslices":
            return f"{SERVICE_NAME_LABEL}={self.service}"
        return None  # Endpoints: the object is named after the Service (field selector)

    @property
    def field_selector(self) -> str | None:
        if self.service is not None and self.api == "endpoints":
            return f"metadata.name={self.service}"
        return None

    async def prepare(self) -> None:
        """Import the kubernetes client (over half a second of CPU) in a thread, before
        the node reports ready: imported inside ``watch()`` it stalled the event loop of
        a node that was already linked, or about to be."""
        await asyncio.to_thread(_import_client)

    # -- configuration ----------------------------------------------------------------

    async def _load_configuration(self) -> Any:
        if self._configuration is not None:
            return self._configuration
        from kubernetes.aio import config as kconfig
        from kubernetes.aio.client import Configuration

        env = self._environ
        if self.kubeconfig is None and env.get("KUBERNETES_SERVICE_HOST"):
            return self._in_cluster_configuration(Configuration)
        path = self._kubeconfig_path()
        cfg = Configuration()
        load: Any = kconfig.load_kube_config
        try:
            await load(
                config_file=path, context=self.context, client_configuration=cfg,
                persist_config=False,
            )
        except (OSError, kconfig.ConfigException) as exc:
            where = "not in a pod (KUBERNETES_SERVICE_HOST is unset) and "
            raise DiscoveryError(
                self.describe(),
                f"{where if self.kubeconfig is None else ''}cannot load kubeconfig {path}: {exc}",
            ) from exc
        return cfg

    def _kubeconfig_path(self) -> str:
        return (
            self.kubeconfig
            or self._environ.get("KUBECONFIG")
            or os.path.join(self._environ.get("HOME") or os.path.expanduser("~"), ".kube", "config")
        )

    def _in_cluster_configuration(self, configuration_class: Any) -> Any:
        """Like ``load_incluster_config`` but strips the token (a trailing newline would
        make every request fail) and reads our injected environ and directory."""
        env = self._environ
        host = env.get("KUBERNETES_SERVICE_HOST", "")
        port = env.get("KUBERNETES_SERVICE_PORT", "443") or "443"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        token_file = self._sa_dir / "token"
        ca_file = self._sa_dir / "ca.crt"

        def read_token() -> str:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                raise DiscoveryError(self.describe(), f"in-cluster: cannot read token {token_file}: {exc}") from exc
            if not token:
                raise DiscoveryError(self.describe(), f"in-cluster: token file {token_file} is empty")
            return token

        token = read_token()
        if not ca_file.is_file() or ca_file.stat().st_size == 0:
            raise DiscoveryError(self.describe(), f"in-cluster: CA file {ca_file} is missing or empty")
        cfg = configuration_class(host=f"https://{host}:{port}")
        cfg.ssl_ca_cert = str(ca_file)
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        read_at = time.monotonic()

        def refresh(c: Any) -> None:
            nonlocal read_at
            if time.monotonic() - read_at >= TOKEN_REFRESH:
                read_at = time.monotonic()
                with contextlib.suppress(DiscoveryError):  # keep the old token; the API says 401
                    c.api_key = {"BearerToken": read_token()}

        cfg.refresh_api_key_hook = refresh
        return cfg

    # -- the watch loop ---------------------------------------------------------------

    async def watch(self, local: LocalNode) -> AsyncIterator[Snapshot]:
        """List, then watch; yield the whole snapshot whenever it changes (and once after
        the first list, even if empty). Raises ``DiscoveryError`` on failure. Closing
        (``aclose()``) or cancelling at any point is safe: the open response and the
        HTTP session are released."""
        from kubernetes.aio.client import ApiClient

        cfg = await self._load_configuration()
        api_client: Any = ApiClient(cfg)
        try:
            # What this instance last yielded, across watch() calls. After a failure
            # the runner calls watch() again; if the re-list shows nothing new, the
            # snapshot is yielded only once the watch is open too, so a watch that keeps
            # failing (RBAC without "watch", a proxy that refuses streams) is not
            # reported as a success after every list - the runner's backoff grows.
            last = self._published
            first = True
            while True:
                objects, rv = await self._list(api_client)
                snapshot = _union(objects)
                confirm = False
                if snapshot != last:
                    last = self._published = snapshot
                    yield snapshot
                elif first:
                    confirm = True  # unchanged since an earlier call: yield once watching
                first = False
                quick_ends = 0
                try:
                    while True:  # one watch request per turn; resumed from rv
                        started = time.monotonic()
                        events = 0
                        async for etype, obj in self._watch_once(api_client, rv):
                            if etype == _OPEN:
                                if confirm:
                                    confirm = False
                                    yield snapshot
                                continue
                            events += 1
                            meta = obj.get("metadata") or {}
                            rv = str(meta.get("resourceVersion") or rv)
                            if etype == "BOOKMARK":
                                continue
                            name = str(meta.get("name", ""))
                            if etype in ("ADDED", "MODIFIED"):
                                objects[name] = self._endpoints_of(obj)
                            elif etype == "DELETED":
                                objects.pop(name, None)
                            else:
                                continue
                            snapshot = _union(objects)
                            if snapshot != last:
                                last = self._published = snapshot
                                confirm = False
                                yield snapshot
                        # The server ended the watch (timeoutSeconds) or the stream
                        # dropped: resume from rv. Never spin on a server that closes
                        # watches at once.
                        if events == 0 and time.monotonic() - started < 1.0:
                            quick_ends += 1
                            await asyncio.sleep(min(0.05 * 2**quick_ends, 5.0))
                        else:
                            quick_ends = 0
                        log.debug("%s: watch ended after %d event(s); resuming from %s",
                                  self.describe(), events, rv)
                except _Expired:
                    log.info("%s: resourceVersion %s expired (410 Gone); listing again",
                             self.describe(), rv)
        finally:
            await api_client.close()

    def _call(self, api_client: Any) -> Any:
        from kubernetes.aio import client

        if self.api == "endpointslices":
            return client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice_without_preload_content
        return client.CoreV1Api(api_client).list_namespaced_endpoints_without_preload_content

    def _selectors(self) -> dict[str, str]:
        kw: dict[str, str] = {}
        if self.label_selector is not None:
            kw["label_selector"] = self.label_selector
        if self.field_selector is not None:
            kw["field_selector"] = self.field_selector
        return kw

    async def _list(self, api_client: Any) -> tuple[dict[str, frozenset[Endpoint]], str]:
        where = f"{self._resource.path}/namespaces/{self.namespace}/{self._resource.api}"
        wire = {"label_selector": "labelSelector", "field_selector": "fieldSelector"}
        query = "?" + "&".join(f"{wire[k]}={v}" for k, v in self._selectors().items())
        self.last_lookup = f"list {where}{query}: no successful answer"
        body = await self._request(api_client, "list", self._call(api_client), self._selectors())
        items = body.get("items") or []
        objects = {str((o.get("metadata") or {}).get("name", "")): self._endpoints_of(o) for o in items}
        rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.last_lookup = (
            f"list {where}{query}: {len(items)} object(s), "
            f"{len(_union(objects))} candidate(s) at resourceVersion {rv or '?'}; then watch"
        )
        if not items and self.service is not None:
            await self._check_service_exists(api_client)
        return objects, rv

    async def _check_service_exists(self, api_client: Any) -> None:
        """No slices for a Service: it exists with nobody behind it (authoritative empty),
        or it does not exist at all (an error). The Endpoints object of the same name
        tells, with the RBAC our manifests grant (get endpoints)."""
        from kubernetes.aio import client

        if self.api == "endpoints":
            missing = True  # the list was by name: no object means no Service
        else:
            call = client.CoreV1Api(api_client).read_namespaced_endpoints_without_preload_content
            try:
                await self._request(api_client, "get", call, {"name": str(self.service)}, quiet_404=True)
                missing = False
            except _NotFound:
                missing = True
            except DiscoveryForbidden as exc:
                self._warn_once(
                    "exists",
                    "%s: cannot tell an empty Service from a missing one (%s); treating as empty",
                    self.describe(), exc.reason,
                )
                missing = False
        if missing:
            raise DiscoveryError(
                self.describe(),
                f"Service {self.service!r} not found in namespace {self.namespace!r} "
                "(no EndpointSlices or Endpoints; check the name and that the namespace exists)",
            )

    async def _request(self, api_client: Any, verb: str, call: Any, params: Mapping[str, str],
                       *, quiet_404: bool = False) -> dict[str, Any]:
        """One non-streaming request; the parsed JSON body, or a mapped exception."""
        import aiohttp

        try:
            resp = await call(namespace=self.namespace, _request_timeout=self.request_timeout, **params)
            try:
                data = await resp.read()
                status = resp.status
            finally:
                resp.release()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(api_client, verb, exc) from exc
        if status != 200:
            if status == 404 and quiet_404:
                raise _NotFound()
            raise self._http_error(verb, status, data)
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise DiscoveryError(self.describe(), f"{verb}: malformed JSON from the API server: {exc}") from exc
        if not isinstance(body, dict):
            raise DiscoveryError(self.describe(), f"{verb}: unexpected response from the API server")
        return body

    async def _watch_once(self, api_client: Any, rv: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """One watch request from ``rv``: yields (type, object) until the server ends it
        or the stream drops (then it simply returns). Raises ``_Expired`` on 410."""
        import aiohttp

        timeout_seconds = max(1, int(self.watch_timeout * random.uniform(1.0, 1.5)))
        try:
            resp = await self._call(api_client)(
                namespace=self.namespace, watch=True, resource_version=rv or None,
                allow_watch_bookmarks=True, timeout_seconds=timeout_seconds,
                _request_timeout=float(timeout_seconds) + self.request_timeout,
                **self._selectors(),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._unreachable(api_client, "watch", exc) from exc
        try:
            if resp.status != 200:
                try:
                    data = await resp.read()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    data = b""
                if resp.status == 410:
                    raise _Expired()
                raise self._http_error("watch", resp.status, data)
            yield _OPEN, {}
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.debug("%s: watch stream dropped: %r", self.describe(), exc)
                    return
                if not line:
                    return  # server ended the watch
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                    etype = str(event["type"])
                    obj = event["object"]
                    if not isinstance(obj, dict):
                        raise TypeError("object is not a JSON object")
                except (ValueError, KeyError, TypeError) as exc:
                    raise DiscoveryError(self.describe(), f"watch: malformed event from the API server: {exc}") from exc
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired()
                    raise self._http_error("watch", int(obj.get("code") or 500), json.dumps(obj).encode())
                yield etype, obj
        finally:
            resp.release()

    # -- errors -----------------------------------------------------------------------

    def _unreachable(self, api_client: Any, verb: str, exc: BaseException) -> DiscoveryError:
        host = getattr(api_client.configuration, "host", "?")
        what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return DiscoveryError(self.describe(), f"{verb}: API server {host} unreachable: {what}")

    def rbac_rule(self, verb: str = "list") -> str:
        """The RBAC rule this strategy needs, for messages and ``doctor``."""
        group = self._resource.group
        return (
            f'Role in namespace "{self.namespace}" with rule apiGroups: ["{group}"], '
            f'resources: ["{self._resource.api}"], verbs: ["get", "list", "watch"] '
            f"(missing: {verb}), bound by a RoleBinding to the pod's ServiceAccount "
            "(see manifests/base/rbac.yaml)"
        )

    def _http_error(self, verb: str, status: int, data: bytes) -> DiscoveryError:
        message = _status_message(data)
        where = f"{self._resource.path}/namespaces/{self.namespace}/{self._resource.api}"
        if status == 401:
            return DiscoveryForbidden(
                self.describe(),
                f"{verb} {where}: 401 Unauthorized: the API server rejected our credentials"
                f" ({message})",
                rule="a valid ServiceAccount token (automountServiceAccountToken: true) "
                "or kubeconfig credentials",
            )
        if status == 403:
            return DiscoveryForbidden(
                self.describe(), f"{verb} {where}: 403 Forbidden ({message})", rule=self.rbac_rule(verb),
            )
        if status == 404 and self.api == "endpointslices" and verb != "get":
            return DiscoveryError(
                self.describe(),
                f"{verb} {where}: 404 Not Found ({message}): this API server does not serve "
                "EndpointSlices (discovery.k8s.io/v1, Kubernetes >= 1.21); use api=endpoints "
                "(URL ?api=endpoints)",
            )
        return DiscoveryError(self.describe(), f"{verb} {where}: HTTP {status} ({message})")

    # -- objects -> endpoints ---------------------------------------------------------

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        level = logging.WARNING if key not in self._warned else logging.DEBUG
        self._warned.add(key)
        log.log(level, msg, *args)

    def _endpoints_of(self, obj: Mapping[str, Any]) -> frozenset[Endpoint]:
        if self.api == "endpointslices":
            return frozenset(self._from_slice(obj))
        return frozenset(self._from_endpoints(obj))

    def _port_of(self, ports: Iterable[Mapping[str, Any]] | None, owner: str) -> int | None:
        if isinstance(self.port, int):
            return self.port
        names = []
        for p in ports or ():
            names.append(p.get("name") or "")
            if (p.get("name") or "") == self.port and p.get("port"):
                return int(p["port"])
        self._warn_once(
            f"port:{owner}",
            "%s: %s has no port named %r (it has: %s); name the Service port %r or pass port=",
            self.describe(), owner, self.port, ", ".join(repr(n) for n in names) or "none", self.port,
        )
        return None

    def _from_slice(self, obj: Mapping[str, Any]) -> Iterable[Endpoint]:
        meta = obj.get("metadata") or {}
        owner = f"EndpointSlice {meta.get('name')}"
        service = self.service or (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        endpoints = obj.get("endpoints") or []
        if not endpoints:
            return
        port = self._port_of(obj.get("ports"), owner)
        if port is None:
            return
        for ep in endpoints:
            conditions = ep.get("conditions") or {}
            if conditions.get("terminating") is True:
                continue
            # ready: nil means "unknown, assume ready" (API docs)
            if not self.include_not_ready and conditions.get("ready") is False:
                continue
            addresses = ep.get("addresses") or []
            if not addresses:
                continue
            ref = ep.get("targetRef") or {}
            name = ref.get("name") if ref.get("kind", "Pod") == "Pod" else None
            if obj.get("addressType") == "FQDN":
                host: str | None = str(addresses[0])  # already a name: dialled as is
            else:
                host = self._host(str(addresses[0]), ep.get("hostname"), service, owner)
            if host is not None:
                yield Endpoint(host, port, name or ep.get("hostname"))

    def _from_endpoints(self, obj: Mapping[str, Any]) -> Iterable[Endpoint]:
        meta = obj.get("metadata") or {}
        owner = f"Endpoints {meta.get('name')}"
        service = str(meta.get("name") or self.service or "")
        for subset in obj.get("subsets") or []:
            addresses = list(subset.get("addresses") or [])
            if self.include_not_ready:
                addresses += subset.get("notReadyAddresses") or []
            if not addresses:
                continue
            port = self._port_of(subset.get("ports"), owner)
            if port is None:
                continue
            for addr in addresses:
                ip = addr.get("ip")
                if not ip:
                    continue
                ref = addr.get("targetRef") or {}
                name = ref.get("name") if ref.get("kind", "Pod") == "Pod" else None
                host = self._host(str(ip), addr.get("hostname"), service, owner)
                if host is not None:
                    yield Endpoint(host, port, name or addr.get("hostname"))

    def _host(self, ip: str, hostname: str | None, service: str | None, owner: str) -> str | None:
        if self.mode == "ip":
            return ip
        if self.mode == "dns":
            return f"{ip.replace('.', '-').replace(':', '-')}.{self.namespace}.pod.{self.cluster_domain}"
        if not hostname or not service:
            self._warn_once(
                f"hostname:{owner}",
                "%s: %s has an endpoint without a hostname (%s); mode=hostname needs a "
                "StatefulSet whose serviceName is the Service (or pod spec.hostname and "
                "spec.subdomain); skipping it",
                self.describe(), owner, ip,
            )
            return None
        return f"{hostname}.{service}.{self.namespace}.svc.{self.cluster_domain}"


class _NotFound(Exception):
    pass


def _union(objects: Mapping[str, frozenset[Endpoint]]) -> Snapshot:
    out: set[Endpoint] = set()
    for eps in objects.values():
        out |= eps
    return frozenset(out)


def _status_message(data: bytes) -> str:
    """The message of a Kubernetes ``Status`` body, or the start of a text body."""
    text = data.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError):
        body = json.loads(text)
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return text[:200] or "no body"
