"""Kubernetes API discovery through the real ``kubernetes.aio`` client against the test
API server in ``support.k8s_api`` (real wire protocol: TLS, bearer auth, list, chunked
watch stream, BOOKMARK, 410, Status bodies)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from support.k8s_api import (
    FakeKubeAPI,
    endpoint,
    endpoint_slice,
    endpoints_object,
    write_kubeconfig,
)
from support.nodeproc import scaled

from peerlink.discovery import from_url
from peerlink.discovery.base import LocalNode, Snapshot, StrategyRunner
from peerlink.discovery.kubernetes import Kubernetes
from peerlink.errors import ConfigError, DiscoveryError, DiscoveryForbidden

LOCAL = LocalNode("test", "me", "inc", "127.0.0.1", 4370, 1)
SLICES = "endpointslices"
STEP = scaled(5.0)  # deadline for one expected change (seconds; PEERLINK_TEST_TIME_FACTOR)


# -- helpers ----------------------------------------------------------------------------


def hosts(snapshot: Iterable[Any]) -> set[str]:
    return {str(e) for e in snapshot}


def eps(*ips: str, port: int = 4370) -> set[str]:
    return {f"{ip}:{port}" for ip in ips}


def ready(*ips: str) -> list[dict[str, Any]]:
    return [endpoint(ip, pod=f"pod-{ip.rsplit('.', 1)[-1]}") for ip in ips]


async def eventually(pred: Callable[[], bool], timeout: float = STEP, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Driver:
    """Consumes ``strategy.watch()`` in a task (like the runner, it asks for the next
    snapshot at once); ``next()`` returns the next yielded snapshot or raises what
    ``watch()`` raised."""

    def __init__(self, strategy: Kubernetes) -> None:
        self.strategy = strategy
        self.seen: list[set[str]] = []
        self.raw: list[Snapshot] = []
        self._queue: asyncio.Queue[Snapshot | BaseException] = asyncio.Queue()
        self._task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        gen = self.strategy.watch(LOCAL)
        try:
            async for snap in gen:
                self._queue.put_nowait(snap)
        except Exception as exc:
            self._queue.put_nowait(exc)
        finally:
            await gen.aclose()

    async def next(self, timeout: float = STEP) -> set[str]:
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        self.raw.append(item)
        self.seen.append(hosts(item))
        return self.seen[-1]

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Runner:
    """Drives the strategy through the real ``StrategyRunner`` (failure keeps the
    last good snapshot, backoff)."""

    def __init__(self, strategy: Kubernetes) -> None:
        self.snapshots: list[Snapshot] = []
        self.runner = StrategyRunner(strategy, LOCAL, lambda _r, s: self.snapshots.append(s),
                                     retry_initial=0.05, retry_max=0.2)
        self.task = asyncio.create_task(self.runner.run())

    @property
    def current(self) -> set[str] | None:
        snap = self.runner.status.snapshot
        return None if snap is None else hosts(snap)

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[FakeKubeAPI]:
    srv = FakeKubeAPI(bookmark_interval=0.2)
    await srv.start("127.0.0.1", 0, tls_dir=tmp_path / "tls")
    try:
        yield srv
    finally:
        await srv.close()


def client_config(api: FakeKubeAPI, token: str = "test-token") -> Any:
    from kubernetes.aio.client import Configuration

    cfg = Configuration(host=api.url, api_key={"BearerToken": token},
                        api_key_prefix={"BearerToken": "Bearer"})
    cfg.ssl_ca_cert = api.ca_path
    return cfg


@pytest.fixture
async def make(api: FakeKubeAPI) -> AsyncIterator[Callable[..., Awaitable[Driver]]]:
    drivers: list[Driver] = []

    async def factory(service: str | None = "peers", **kw: Any) -> Driver:
        kw.setdefault("namespace", "default")
        kw.setdefault("configuration", client_config(api))
        d = Driver(Kubernetes(service, **kw))
        drivers.append(d)
        return d

    yield factory
    for d in drivers:
        await d.aclose()


@pytest.fixture
async def run(api: FakeKubeAPI) -> AsyncIterator[Callable[..., Runner]]:
    runners: list[Runner] = []

    def factory(service: str | None = "peers", **kw: Any) -> Runner:
        kw.setdefault("namespace", "default")
        kw.setdefault("configuration", client_config(api))
        r = Runner(Kubernetes(service, **kw))
        runners.append(r)
        return r

    yield factory
    for r in runners:
        await r.aclose()


# -- readiness, scaling, slices -------------------------------------------------------------


async def test_list_keeps_only_ready_not_terminating_endpoints(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", [
        endpoint("10.0.0.1", pod="a"),
        endpoint("10.0.0.2", ready=False, pod="b"),
        endpoint("10.0.0.3", ready=False, serving=True, terminating=True, pod="c"),
        endpoint("10.0.0.4", ready=None, terminating=None, pod="d"),  # unknown = ready
    ]))
    api.put(SLICES, endpoint_slice("other-a", "other", ready("10.9.9.9")))
    d = await make()
    assert await d.next() == eps("10.0.0.1", "10.0.0.4")
    assert {e.name for e in d.raw[-1]} == {"a", "d"}  # pod names as hints
    d2 = await make(include_not_ready=True)
    assert await d2.next() == eps("10.0.0.1", "10.0.0.2", "10.0.0.4")  # never terminating ones


async def test_pod_becomes_ready_then_not_ready_then_terminates(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", [endpoint("10.0.0.1", ready=False)]))
    d = await make()
    assert await d.next() == set()  # exists, nobody ready: authoritative empty, yielded once
    api.put(SLICES, endpoint_slice("peers-a", "peers", [endpoint("10.0.0.1")]))
    assert await d.next() == eps("10.0.0.1")
    api.put(SLICES, endpoint_slice("peers-a", "peers", [endpoint("10.0.0.1", ready=False)]))
    assert await d.next() == set()
    api.put(SLICES, endpoint_slice("peers-a", "peers", [endpoint("10.0.0.1")]))
    assert await d.next() == eps("10.0.0.1")
    # a rolling deploy marks the pod terminating (still serving): dropped at once
    api.put(SLICES, endpoint_slice("peers-a", "peers", [
        endpoint("10.0.0.1", ready=False, serving=True, terminating=True)]))
    assert await d.next() == set()


async def test_scale_up_and_down(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    d = await make()
    assert await d.next() == eps("10.0.0.1")
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1", "10.0.0.2", "10.0.0.3")))
    assert await d.next() == eps("10.0.0.1", "10.0.0.2", "10.0.0.3")
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    assert await d.next() == eps("10.0.0.1")


async def test_only_changes_are_yielded(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    d = await make()
    assert await d.next() == eps("10.0.0.1")
    # same endpoints, new resourceVersion and labels: no new snapshot
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1"), labels={"x": "y"}))
    api.put(SLICES, endpoint_slice("peers-b", "peers", [endpoint("10.0.0.7", ready=False)]))
    api.put(SLICES, endpoint_slice("peers-b", "peers", ready("10.0.0.2")))
    assert await d.next() == eps("10.0.0.1", "10.0.0.2")  # the next value is the real change


async def test_slice_split_in_two_and_slice_deletion(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")))
    d = await make()
    everyone = eps("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
    assert await d.next() == everyone
    # the controller splits: a second slice takes two endpoints, the first sheds them
    api.put(SLICES, endpoint_slice("peers-b", "peers", ready("10.0.0.3", "10.0.0.4")))
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1", "10.0.0.2")))
    # both slices merged: still everyone, so nothing new is yielded; a change proves it
    api.put(SLICES, endpoint_slice("peers-b", "peers", ready("10.0.0.3", "10.0.0.4", "10.0.0.5")))
    assert await d.next() == everyone | eps("10.0.0.5")
    # deleting one slice removes only its endpoints
    api.delete(SLICES, "peers-b")
    assert await d.next() == eps("10.0.0.1", "10.0.0.2")
    api.delete(SLICES, "peers-a")
    assert await d.next() == set()


async def test_dual_stack_slices_merge(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-v4", "peers", ready("10.0.0.1")))
    api.put(SLICES, endpoint_slice("peers-v6", "peers", [endpoint("fd00::1")], address_type="IPv6"))
    d = await make()
    assert await d.next() == {"10.0.0.1:4370", "[fd00::1]:4370"}


# -- watch mechanics ------------------------------------------------------------------------


async def test_watch_request_wire_format(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    d = await make()
    await d.next()
    await eventually(lambda: len(api.requests_for(SLICES, watch=True)) == 1, what="a watch")
    lst = api.requests_for(SLICES, watch=False)[0]
    w = api.requests_for(SLICES, watch=True)[0]
    assert lst.path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    assert lst.query["labelSelector"] == "kubernetes.io/service-name=peers"
    assert w.query["watch"] == "true"
    assert w.query["allowWatchBookmarks"] == "true"
    assert w.query["resourceVersion"] == str(api.rv)  # from the list
    assert int(w.query["timeoutSeconds"]) >= 300
    assert w.headers["Authorization"] == "Bearer test-token"


async def test_dropped_watch_resumes_from_last_resource_version(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    d = await make()
    await d.next()
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1", "10.0.0.2")))
    assert await d.next() == eps("10.0.0.1", "10.0.0.2")
    seen_rv = api.rv
    await eventually(lambda: len(api.watchers) == 1, what="an open watch")
    assert api.drop_watches() == 1  # connection aborted mid-stream
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.2")))  # happens while disconnected
    assert await d.next() == eps("10.0.0.2")
    watches = api.requests_for(SLICES, watch=True)
    assert len(watches) >= 2
    assert int(watches[1].query["resourceVersion"]) >= seen_rv
    assert int(watches[1].query["resourceVersion"]) < api.rv  # replayed, not re-listed
    assert len(api.requests_for(SLICES, watch=False)) == 1


async def test_server_side_timeout_resumes_without_relist(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    d = await make(watch_timeout=1.0)
    await d.next()
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1", "10.0.0.2")))
    event_rv = api.rv
    assert await d.next() == eps("10.0.0.1", "10.0.0.2")
    await eventually(lambda: len(api.requests_for(SLICES, watch=True)) >= 2, timeout=5,
                     what="the watch to be renewed after timeoutSeconds=1")
    second = api.requests_for(SLICES, watch=True)[1]
    assert second.query["timeoutSeconds"] == "1"
    assert second.query["resourceVersion"] == str(event_rv)
    assert len(api.requests_for(SLICES, watch=False)) == 1
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.3")))
    assert await d.next() == eps("10.0.0.3")


async def test_bookmark_moves_the_resume_point(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    d = await make()
    await d.next()
    # changes elsewhere advance the global resourceVersion; only a BOOKMARK tells us
    for i in range(3):
        api.put(SLICES, endpoint_slice(f"other-{i}", "other", ready(f"10.1.0.{i}")))
    target = api.rv
    await eventually(lambda: target in api.bookmarks_sent, what=f"a BOOKMARK at {target}")
    api.end_watches()  # a clean end: everything written before it is read by the client
    await eventually(lambda: len(api.requests_for(SLICES, watch=True)) >= 2, what="re-watch")
    assert api.requests_for(SLICES, watch=True)[1].query["resourceVersion"] == str(target)
    assert len(api.requests_for(SLICES, watch=False)) == 1
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.9")))
    assert await d.next() == eps("10.0.0.9")


async def test_410_expired_watch_relists(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    api.put(SLICES, endpoint_slice("peers-b", "peers", ready("10.0.0.2")))
    d = await make()
    assert await d.next() == eps("10.0.0.1", "10.0.0.2")
    await eventually(lambda: len(api.watchers) == 1, what="an open watch")
    # the history is compacted and a change is lost to the watch: only a re-list sees it
    api.delete(SLICES, "peers-b", notify=False)
    api.compact()
    api.expire_watches()
    assert await d.next() == eps("10.0.0.1")
    assert len(api.requests_for(SLICES, watch=False)) == 2


async def test_410_on_rewatch_from_compacted_version_relists(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    d = await make()
    await d.next()
    await eventually(lambda: len(api.watchers) == 1, what="an open watch")
    api.put(SLICES, endpoint_slice("other-a", "other", ready("10.1.0.1")))
    api.compact()
    api.drop_watches()  # the resume from the old resourceVersion gets ERROR 410
    await eventually(lambda: len(api.requests_for(SLICES, watch=False)) == 2, what="a re-list")
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.5")))
    assert await d.next() == eps("10.0.0.5")


# -- failures -------------------------------------------------------------------------------


async def test_401_is_forbidden_not_empty(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    d = await make(configuration=client_config(api, token="wrong"))
    with pytest.raises(DiscoveryForbidden, match="401 Unauthorized") as info:
        await d.next()
    assert "token" in info.value.rule


async def test_403_keeps_snapshot_and_names_the_rbac_rule(api: FakeKubeAPI, run: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    r = run()
    await eventually(lambda: r.current == eps("10.0.0.1"), what="first snapshot")
    await eventually(lambda: len(api.watchers) == 1, what="an open watch")
    api.forbid(SLICES, "list", "watch")  # the Role binding was removed
    api.drop_watches()
    await eventually(lambda: r.runner.status.failures >= 2, what="failures")
    err = r.runner.status.last_error or ""
    assert "403 Forbidden" in err and "grant: Role" in err
    assert '"discovery.k8s.io"' in err and '"endpointslices"' in err
    assert '"watch"' in err and 'namespace "default"' in err
    assert r.current == eps("10.0.0.1")  # kept, never "nobody"
    assert all(s for s in r.snapshots)
    api.heal()
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.2")))
    await eventually(lambda: r.current == eps("10.0.0.2"), what="recovery")


async def test_403_error_object(api: FakeKubeAPI, make: Any) -> None:
    api.forbid(SLICES, "list")
    d = await make()
    with pytest.raises(DiscoveryForbidden) as info:
        await d.next()
    assert 'resources: ["endpointslices"]' in info.value.rule
    assert "missing: list" in info.value.rule
    assert "cannot list resource" in str(info.value)  # the API server's own message


async def test_500_raises_and_runner_recovers(api: FakeKubeAPI, make: Any, run: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    api.fail(500, count=1)
    d = await make()
    with pytest.raises(DiscoveryError, match="HTTP 500"):
        await d.next()
    api.fail(500, count=3)
    r = run()
    await eventually(lambda: r.current == eps("10.0.0.1"), what="recovery after 500s")
    assert r.runner.status.failures == 3
    assert r.snapshots == [r.runner.status.snapshot]  # nothing but the good one was published


async def test_500_on_rewatch_keeps_snapshot(api: FakeKubeAPI, run: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    r = run()
    await eventually(lambda: len(api.watchers) == 1, what="an open watch")
    api.fail(503, count=None, verb="watch")
    api.drop_watches()
    await eventually(lambda: r.runner.status.failures >= 2, what="failures")
    assert "HTTP 503" in (r.runner.status.last_error or "")
    assert r.current == eps("10.0.0.1")
    api.heal()
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.4")))
    await eventually(lambda: r.current == eps("10.0.0.4"), what="recovery")


async def test_slow_server_times_out(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    api.delay = 0.5
    d = await make(request_timeout=0.1)
    with pytest.raises(DiscoveryError, match="timed out"):
        await d.next()
    d2 = await make(request_timeout=3.0)  # slow but within the limit: works
    assert await d2.next() == eps("10.0.0.1")


async def test_unreachable_api_server(api: FakeKubeAPI, make: Any) -> None:
    from kubernetes.aio.client import Configuration

    cfg = Configuration(host="https://127.0.0.1:1")
    d = await make(configuration=cfg)
    with pytest.raises(DiscoveryError, match="unreachable"):
        await d.next()


async def test_tls_with_unknown_ca_fails(api: FakeKubeAPI, make: Any) -> None:
    cfg = client_config(api)
    cfg.ssl_ca_cert = None
    d = await make(configuration=cfg)
    with pytest.raises(DiscoveryError, match="unreachable"):
        await d.next()


async def test_missing_service_is_an_error(api: FakeKubeAPI, make: Any) -> None:
    d = await make("nosuch")
    with pytest.raises(DiscoveryError, match="Service 'nosuch' not found in namespace 'default'"):
        await d.next()
    d2 = await make(namespace="nosuchns")
    with pytest.raises(DiscoveryError, match="not found in namespace 'nosuchns'"):
        await d2.next()


async def test_service_without_slices_but_existing_is_empty(api: FakeKubeAPI, make: Any) -> None:
    api.put("endpoints", endpoints_object("peers"))
    d = await make()
    assert await d.next() == set()


async def test_slices_not_served_suggests_endpoints_api(api: FakeKubeAPI, make: Any) -> None:
    api.serve_slices = False
    d = await make()
    with pytest.raises(DiscoveryError, match=r"api=endpoints"):
        await d.next()


# -- the Endpoints API, modes, ports, selectors ------------------------------------------------


async def test_endpoints_api(api: FakeKubeAPI, make: Any) -> None:
    api.put("endpoints", endpoints_object("peers", [("10.0.0.1", "a")], [("10.0.0.2", "b")]))
    api.put("endpoints", endpoints_object("other", [("10.9.9.9", "z")]))
    d = await make(api="endpoints")
    assert await d.next() == eps("10.0.0.1")
    req = api.requests_for("endpoints", watch=False)[0]
    assert req.path == "/api/v1/namespaces/default/endpoints"
    assert req.query["fieldSelector"] == "metadata.name=peers"
    api.put("endpoints", endpoints_object("peers", [("10.0.0.1", "a"), ("10.0.0.2", "b")]))
    assert await d.next() == eps("10.0.0.1", "10.0.0.2")
    api.delete("endpoints", "peers")
    assert await d.next() == set()
    d2 = await make(api="endpoints", include_not_ready=True)
    api.put("endpoints", endpoints_object("peers", [("10.0.0.1", "a")], [("10.0.0.2", "b")]))
    assert await d2.next() == eps("10.0.0.1", "10.0.0.2")
    d3 = await make("nosuch", api="endpoints")
    with pytest.raises(DiscoveryError, match="not found"):
        await d3.next()


async def test_modes_hostname_and_dns(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", [
        endpoint("10.0.0.1", hostname="peers-0", pod="peers-0"),
        endpoint("10.0.0.2", pod="loose"),  # no hostname: skipped in hostname mode
    ]))
    d = await make(mode="hostname", cluster_domain="example.org")
    assert await d.next() == {"peers-0.peers.default.svc.example.org:4370"}
    d2 = await make(mode="dns")
    assert await d2.next() == {"10-0-0-1.default.pod.cluster.local:4370",
                               "10-0-0-2.default.pod.cluster.local:4370"}


async def test_port_by_name_number_and_missing(api: FakeKubeAPI, make: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1"),
                                   ports=[("http", 8080), ("gossip", 4999)]))
    assert await (await make(port="gossip")).next() == eps("10.0.0.1", port=4999)
    assert await (await make(port=7000)).next() == eps("10.0.0.1", port=7000)
    assert await (await make(port="4371")).next() == eps("10.0.0.1", port=4371)
    assert await (await make()).next() == set()
    assert "no port named 'peerlink'" in caplog.text and "'gossip'" in caplog.text


async def test_label_selector_across_services(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("a-1", "a", ready("10.0.0.1"), labels={"app": "chat"}))
    api.put(SLICES, endpoint_slice("b-1", "b", ready("10.0.0.2"), labels={"app": "chat"}))
    api.put(SLICES, endpoint_slice("c-1", "c", ready("10.0.0.3"), labels={"app": "web"}))
    d = await make(None, selector="app=chat")
    assert await d.next() == eps("10.0.0.1", "10.0.0.2")
    assert api.requests_for(SLICES)[0].query["labelSelector"] == "app=chat"
    # a slice whose labels stop matching leaves the selection (watch sends DELETED)
    api.put(SLICES, endpoint_slice("b-1", "b", ready("10.0.0.2"), labels={"app": "web"}))
    assert await d.next() == eps("10.0.0.1")


async def test_selector_matching_nothing_is_empty(api: FakeKubeAPI, make: Any) -> None:
    d = await make(None, selector="app=nobody")
    assert await d.next() == set()


# -- configuration ----------------------------------------------------------------------------


def _service_account(tmp_path: Path, api: FakeKubeAPI, token: str = "test-token\n",
                     namespace: str = "default\n") -> Path:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(token)  # a trailing newline, as editors and echo write it
    (sa / "namespace").write_text(namespace)
    assert api.ca_path is not None
    (sa / "ca.crt").write_bytes(Path(api.ca_path).read_bytes())
    return sa


async def test_in_cluster_config_from_env_and_files(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    sa = _service_account(tmp_path, api)
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
    k = Kubernetes("peers", environ=environ, service_account_dir=sa)
    assert k.namespace == "default"  # from the namespace file
    d = Driver(k)
    try:
        assert await d.next() == eps("10.0.0.1")
    finally:
        await d.aclose()
    assert api.requests[0].headers["Authorization"] == "Bearer test-token"


async def test_in_cluster_token_is_reread(api: FakeKubeAPI, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import peerlink.discovery.kubernetes as kmod

    monkeypatch.setattr(kmod, "TOKEN_REFRESH", 0.0)
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    sa = _service_account(tmp_path, api)
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
    d = Driver(Kubernetes("peers", environ=environ, service_account_dir=sa))
    try:
        assert await d.next() == eps("10.0.0.1")
        await eventually(lambda: len(api.watchers) == 1, what="an open watch")
        api.token = "new-token"  # the kubelet rotated the bound token
        (sa / "token").write_text("new-token\n")
        api.drop_watches()
        await eventually(lambda: len(api.requests_for(SLICES, watch=True)) >= 2, what="re-watch")
        api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.2")))
        assert await d.next() == eps("10.0.0.2")  # a 401 would have raised instead
        assert api.requests[-1].headers["Authorization"] == "Bearer new-token"
    finally:
        await d.aclose()


async def test_in_cluster_missing_files(tmp_path: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"}
    k = Kubernetes("peers", namespace="default", environ=environ, service_account_dir=tmp_path)
    with pytest.raises(DiscoveryError, match="cannot read token"):
        await anext(k.watch(LOCAL))


async def test_kubeconfig_file(api: FakeKubeAPI, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    path = write_kubeconfig(tmp_path / "config", api.url, ca_path=api.ca_path)
    for k in (
        Kubernetes("peers", namespace="default", kubeconfig=path, environ={}),
        Kubernetes("peers", namespace="default", environ={"KUBECONFIG": str(path)}),
        from_url(f"k8s://peers?namespace=default&kubeconfig={path}"),
    ):
        assert isinstance(k, Kubernetes)
        d = Driver(k)
        try:
            assert await d.next() == eps("10.0.0.1")
        finally:
            await d.aclose()


async def test_missing_kubeconfig_outside_a_cluster(tmp_path: Path) -> None:
    k = Kubernetes("peers", namespace="default", environ={"HOME": str(tmp_path)})
    with pytest.raises(DiscoveryError, match=r"KUBERNETES_SERVICE_HOST is unset.*\.kube/config"):
        await anext(k.watch(LOCAL))


def test_namespace_defaults(tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    assert Kubernetes("p", environ={"POD_NAMESPACE": "fromenv"}, service_account_dir=sa).namespace == "fromenv"
    (sa / "namespace").write_text("fromfile\n")
    assert Kubernetes("p", environ={"POD_NAMESPACE": "fromenv"}, service_account_dir=sa).namespace == "fromfile"
    assert Kubernetes("p", namespace="given", service_account_dir=sa).namespace == "given"
    with pytest.raises(ConfigError, match=r"POD_NAMESPACE") as info:
        Kubernetes("p", environ={}, service_account_dir=tmp_path / "none")
    assert "none/namespace" in str(info.value)


def test_options_are_validated() -> None:
    ns = {"namespace": "default"}
    with pytest.raises(ConfigError, match="exactly one of service"):
        Kubernetes(**ns)
    with pytest.raises(ConfigError, match="exactly one of service"):
        Kubernetes("a", selector="app=a", **ns)
    with pytest.raises(ConfigError, match="mode='pod'"):
        Kubernetes("a", mode="pod", **ns)
    with pytest.raises(ConfigError, match="api='ep'"):
        Kubernetes("a", api="ep", **ns)
    with pytest.raises(ConfigError, match="port=0"):
        Kubernetes("a", port=0, **ns)


def test_url_form() -> None:
    k = from_url("k8s://chat?namespace=prod&port=gossip&mode=hostname&api=endpoints"
                 "&include_not_ready=true&cluster_domain=corp.local&watch_timeout=60")
    assert isinstance(k, Kubernetes)
    assert (k.service, k.namespace, k.port, k.mode, k.api) == ("chat", "prod", "gossip", "hostname", "endpoints")
    assert k.include_not_ready and k.cluster_domain == "corp.local" and k.watch_timeout == 60.0
    k2 = from_url("k8s://?selector=app%3Dchat,tier%3Dx&namespace=n&port=4370")
    assert isinstance(k2, Kubernetes)
    assert (k2.service, k2.selector, k2.port) == (None, "app=chat,tier=x", 4370)
    assert "k8s://chat" in k.describe()
    for bad, msg in [
        ("k8s://chat?namespace=n&bogus=1", "unknown option"),
        ("k8s://?namespace=n", "expected k8s://SERVICE"),
        ("k8s://chat?selector=a%3Db&namespace=n", "not both"),
        ("k8s://chat?namespace=n&mode=x", "mode="),
    ]:
        with pytest.raises(ConfigError, match=msg):
            from_url(bad)


def test_module_import_does_not_import_kubernetes() -> None:
    code = ("import sys, peerlink.discovery.kubernetes as k; "
            "k.Kubernetes('a', namespace='n'); "
            "assert not any(m == 'kubernetes' or m.startswith('kubernetes.') for m in sys.modules), "
            "sorted(m for m in sys.modules if m.startswith('kubernetes'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


async def test_watch_forbidden_after_list_backs_off_without_fake_successes(
        api: FakeKubeAPI, run: Any) -> None:
    # RBAC grants list but not watch: every cycle lists fine and fails to watch. The
    # unchanged re-list is not reported as a success, so the runner's backoff grows
    # and its status keeps the error.
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    api.forbid(SLICES, "watch")
    r = run()
    await eventually(lambda: r.runner.status.failures >= 4, what="failures")
    assert len(r.snapshots) == 1 and r.current == eps("10.0.0.1")
    assert '"watch"' in (r.runner.status.last_error or "")
    api.heal()  # granted: the next cycle confirms the snapshot once the watch is open
    await eventually(lambda: len(r.snapshots) == 2, what="a confirmed snapshot")
    assert r.snapshots[1] == r.snapshots[0]
    # and a 410 re-list that finds nothing new yields nothing
    await eventually(lambda: len(api.watchers) >= 1, what="an open watch")
    api.compact()
    api.expire_watches()
    await eventually(lambda: len(api.requests_for(SLICES, watch=False)) >= 2 + r.runner.status.failures,
                     what="a re-list")
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.2")))
    await eventually(lambda: r.current == eps("10.0.0.2"), what="the next change")
    assert len(r.snapshots) == 3


@pytest.mark.parametrize(("prefix", "ok"), [("bearer", True), ("BEARER", True), ("Basic", False)])
async def test_bearer_scheme_is_case_insensitive(api: FakeKubeAPI, make: Any, prefix: str, ok: bool) -> None:
    # the in-cluster loader of the kubernetes client sends "bearer <token>"
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    cfg = client_config(api)
    cfg.api_key_prefix = {"BearerToken": prefix}
    d = await make(configuration=cfg)
    if ok:
        assert await d.next() == eps("10.0.0.1")
    else:
        with pytest.raises(DiscoveryForbidden, match="401"):
            await d.next()
    assert api.requests[-1].headers["Authorization"] == f"{prefix} test-token"


async def test_fqdn_slices_are_dialled_by_name(api: FakeKubeAPI, make: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", [endpoint("db.example.org")], address_type="FQDN"))
    for mode in ("ip", "dns"):
        d = await make(mode=mode)
        assert await d.next() == {"db.example.org:4370"}


async def test_kubeconfig_context(api: FakeKubeAPI, tmp_path: Path) -> None:
    import json

    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    path = write_kubeconfig(tmp_path / "config", api.url, ca_path=api.ca_path)
    doc = json.loads(path.read_text())
    doc["current-context"] = "broken"  # points nowhere; only context=test works
    doc["contexts"].append({"name": "broken", "context": {"cluster": "nowhere", "user": "test"}})
    doc["clusters"].append({"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}})
    path.write_text(json.dumps(doc))
    d = Driver(Kubernetes("peers", namespace="default", kubeconfig=path, context="test"))
    try:
        assert await d.next() == eps("10.0.0.1")
    finally:
        await d.aclose()
    k = from_url(f"k8s://peers?namespace=default&kubeconfig={path}")
    with pytest.raises(DiscoveryError, match="unreachable"):
        await anext(k.watch(LOCAL))


async def test_error_event_other_than_410_fails_and_keeps_snapshot(api: FakeKubeAPI, run: Any) -> None:
    from support.k8s_api import status_body

    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1")))
    r = run()
    await eventually(lambda: r.current == eps("10.0.0.1") and len(api.watchers) == 1, what="a watch")
    api.watchers[0].queue.put_nowait({"type": "ERROR", "object": status_body(
        500, "InternalError", "etcd cluster is unavailable")})
    await eventually(lambda: r.runner.status.failures >= 1, what="the failure")
    assert "etcd cluster is unavailable" in (r.runner.status.last_error or "")
    assert r.current == eps("10.0.0.1")


async def test_status_says_what_was_listed(api: FakeKubeAPI, run: Any) -> None:
    api.put(SLICES, endpoint_slice("peers-a", "peers", ready("10.0.0.1", "10.0.0.2")))
    r = run()
    await eventually(lambda: r.current is not None, what="a snapshot")
    lookup = r.runner.status.last_lookup or ""
    assert "list /apis/discovery.k8s.io/v1/namespaces/default/endpointslices" in lookup
    assert "endpointslices?labelSelector=kubernetes.io/service-name=peers:" in lookup
    assert "1 object(s), 2 candidate(s)" in lookup
