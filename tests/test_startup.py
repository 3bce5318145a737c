"""Start-up honesty: a node is ready (``start()`` returns, the CLI prints ``ready``, the
log says so) only once every strategy is prepared - its client library imported - and
running, so nothing heavy is left to stall the event loop of a node peers already
dial. A strategy whose preparation fails is reported, not waited for, and retried."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import peerlink
from peerlink.testing import free_port

TESTS = Path(__file__).resolve().parent


class Gated(peerlink.Strategy):
    """Prepares only when the test opens the gate (a library that takes a while to
    import); fails its first preparation when asked to."""

    scheme = "gated"

    def __init__(self, fail_first: bool = False) -> None:
        self.gate = asyncio.Event()
        self.fail_first = fail_first
        self.prepared = 0

    async def prepare(self) -> None:
        await self.gate.wait()
        self.prepared += 1
        if self.fail_first and self.prepared == 1:
            raise ImportError("no module named 'slowclient'")

    async def watch(self, local: peerlink.LocalNode) -> AsyncIterator[peerlink.Snapshot]:
        yield frozenset()
        await asyncio.Event().wait()


def node(strategy: peerlink.Strategy) -> peerlink.Node:
    return peerlink.Node(peerlink.Config.local(cluster="c", cookie="k", name="a",
                                               listen=f"127.0.0.1:{free_port()}", discovery=[strategy]))


async def test_start_returns_only_once_every_strategy_is_prepared() -> None:
    gated = Gated()
    a = node(gated)
    starting = asyncio.create_task(a.start())
    try:
        done, _ = await asyncio.wait({starting}, timeout=0.3)
        assert not done and a.ready_at is None  # still preparing: not ready
        assert a.status()["node"]["ready"] is False
        gated.gate.set()
        await starting
        assert a.ready_at is not None and a.status()["node"]["ready"] is True
    finally:
        await a.close()


async def test_a_failing_preparation_is_reported_not_waited_for_and_retried() -> None:
    gated = Gated(fail_first=True)
    gated.gate.set()
    async with node(gated) as a:
        (strategy,) = a.status()["strategies"]
        assert strategy["last_error"] == "ImportError: no module named 'slowclient'"
        async with asyncio.timeout(10):  # the runner retries after its backoff
            while a.status()["strategies"][0]["snapshots"] == 0:
                await asyncio.sleep(0.05)
        assert gated.prepared == 2


def test_kubernetes_client_is_imported_before_ready(tmp_path: Path) -> None:
    """In a fresh interpreter (nothing imported yet): when ``start()`` returns, the
    kubernetes client is imported and the watch is open against a real-wire API."""
    script = textwrap.dedent(f"""
        import asyncio, json, sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from support.k8s_api import FakeKubeAPI, write_kubeconfig
        import peerlink

        async def main():
            api = FakeKubeAPI()
            await api.start("127.0.0.1", 0, tls_dir=Path({str(tmp_path)!r}) / "tls")
            kubeconfig = write_kubeconfig(Path({str(tmp_path)!r}) / "kubeconfig", api.url, ca_path=api.ca_path)
            before = "kubernetes.aio.client" in sys.modules
            node = peerlink.Node(peerlink.Config.local(cluster="c", cookie="k", name="a", discovery=[
                peerlink.Kubernetes("peers", namespace="default", kubeconfig=kubeconfig)]))
            await node.start()
            after = "kubernetes.aio.client" in sys.modules
            await node.close()
            await api.close()
            print(json.dumps({{"before": before, "at_ready": after}}))

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == {"before": False, "at_ready": True}
