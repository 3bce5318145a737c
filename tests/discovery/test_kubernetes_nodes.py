"""Real ``peerlink node`` processes in network namespaces that find each other only
through the (test) Kubernetes API: readiness gates links, a scale-down and a rolling
replacement are followed.

Lab: n1..n4 are pods, n5 runs the API server (``support/k8s_api.py`` as a program,
HTTPS with a test CA) on the same bridge; each node gets a kubeconfig pointing at it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from support.k8s_api import endpoint, endpoint_slice, write_kubeconfig
from support.lab import Lab, requires_netns
from support.nodeproc import NodeFactory, NodeProcess, scaled

pytestmark = [requires_netns, pytest.mark.slow]

K8S_API = Path(__file__).resolve().parents[1] / "support" / "k8s_api.py"
PORT = 4370
API_PORT = 6443
API_NODE = 5
PODS = {"a": 1, "b": 2, "c": 3, "d": 4}  # pod name -> lab node index


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


class ApiProcess:
    """The test API server running in a namespace, driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any], log: Path) -> None:
        self.proc = proc
        self.info = info
        self.log = log
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, prefix: list[str], host: str, workdir: Path) -> ApiProcess:
        log = workdir / "k8s-api.stderr"
        with _open_log(log) as err:
            proc = await asyncio.create_subprocess_exec(
                *prefix, sys.executable, str(K8S_API), "--host", host, "--port", str(API_PORT),
                "--tls", str(workdir / "tls"), "--bookmark-interval", "1",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), scaled(20))
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"API server did not start: {log.read_text()}") from None
        if not line:
            raise AssertionError(f"API server exited: {log.read_text()}")
        return cls(proc, json.loads(line), log)

    async def command(self, **cmd: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self._lock:
            self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), scaled(10))
        reply = json.loads(line)
        assert reply["ok"], reply
        return reply["result"]

    async def publish(self, lab: Lab, pods: dict[str, str]) -> None:
        """The Service's one EndpointSlice: pod name -> "ready" | "not-ready" | "terminating"."""
        eps = []
        for name, state in sorted(pods.items()):
            ip = lab.ip4(PODS[name])
            if state == "ready":
                eps.append(endpoint(ip, pod=name))
            elif state == "not-ready":
                eps.append(endpoint(ip, ready=False, pod=name))
            else:
                eps.append(endpoint(ip, ready=False, serving=True, terminating=True, pod=name))
        await self.command(op="put", resource="endpointslices",
                           object=endpoint_slice("peers-x1", "peers", eps))

    async def close(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def cluster(lab: Callable[[int], Lab], tmp_path: Path) -> AsyncIterator[tuple[Lab, ApiProcess, str]]:
    the_lab = lab(API_NODE)
    api = await ApiProcess.start(the_lab.exec_prefix(API_NODE), the_lab.ip4(API_NODE), tmp_path)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.info["url"], ca_path=api.info["ca"])
    url = f"k8s://peers?namespace=default&kubeconfig={kubeconfig}"
    try:
        yield the_lab, api, url
    finally:
        await api.close()


async def start_pod(factory: NodeFactory, lab: Lab, url: str, name: str) -> NodeProcess:
    addr = f"{lab.ip4(PODS[name])}:{PORT}"
    return await factory.start(name, listen=addr, advertise=addr, discovery=[url],
                               prefix=lab.exec_prefix(PODS[name]))


async def test_nodes_follow_readiness_scale_down_and_rolling_replacement(
    cluster: tuple[Lab, ApiProcess, str], node_factory: NodeFactory,
) -> None:
    lab, api, url = cluster
    # a is ready; b and c are starting (not ready): they may dial a (a candidate for
    # them), but nobody may dial b or c, so b and c stay apart
    await api.publish(lab, {"a": "ready", "b": "not-ready", "c": "not-ready"})
    a, b, c = [await start_pod(node_factory, lab, url, n) for n in ("a", "b", "c")]
    await b.wait_event("join", "a", timeout=15)
    await c.wait_event("join", "a", timeout=15)
    await a.wait_event("join", "b", timeout=15)
    await a.wait_event("join", "c", timeout=15)
    assert not b.find("join", "c") and not c.find("join", "b")

    # b and c become ready: the watch tells b about c and c about b
    await api.publish(lab, {"a": "ready", "b": "ready", "c": "ready"})
    await b.wait_event("join", "c", timeout=10)
    await c.wait_event("join", "b", timeout=10)

    # scale down: c is marked terminating, then gets SIGTERM and says goodbye
    marks = {n: n.mark() for n in (a, b)}
    await api.publish(lab, {"a": "ready", "b": "ready", "c": "terminating"})
    assert await c.terminate() == 0
    for n in (a, b):
        await n.wait_event("leave", "c", reason="shutdown", after=marks[n], timeout=10)

    # rolling replacement of b by d: d starts (not ready), becomes ready, is linked by
    # everyone; then b terminates
    await api.publish(lab, {"a": "ready", "b": "ready", "d": "not-ready"})
    d = await start_pod(node_factory, lab, url, "d")
    await d.wait_event("join", "a", timeout=15)
    await d.wait_event("join", "b", timeout=15)
    await api.publish(lab, {"a": "ready", "b": "ready", "d": "ready"})
    for n in (a, b):
        await n.wait_event("join", "d", timeout=10)
    marks = {n: n.mark() for n in (a, d)}
    await api.publish(lab, {"a": "ready", "b": "terminating", "d": "ready"})
    assert await b.terminate() == 0
    for n in (a, d):
        await n.wait_event("leave", "b", reason="shutdown", after=marks[n], timeout=10)
    await api.publish(lab, {"a": "ready", "d": "ready"})

    # the survivors are linked to each other and to no one else, and nobody ever
    # linked c and d (c was gone before d was published)
    assert set(a.peers_up()) == {"d"} and set(d.peers_up()) == {"a"}
    assert not d.find("join", "c")
    requests = await api.command(op="requests")
    assert any("watch=true" in r for r in requests)
