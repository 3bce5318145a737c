"""A real DNS server for discovery tests: dnsmasq, plus a tiny fault server.

``Dnsmasq`` (TEST-ENV.md section 3) serves a headless-service zone on 127.0.0.1 and a
free unprivileged port (or any address/port, also inside a network namespace)::

    d = Dnsmasq(tmp_path / "dns")
    d.set_hosts({"peers.default.svc.cluster.local": ["10.244.0.10", "fd00::10"]})
    d.start()                      # ready when it returns
    d.set_hosts({...})             # A/AAAA: hostsdir, re-read through inotify, no restart
    d.set_srv("_peerlink._tcp.peers.default.svc.cluster.local",
              [("pod-0.peers.default.svc.cluster.local", 7000)])   # SRV: restarts dnsmasq
    d.pause(); d.resume()          # SIGSTOP / SIGCONT: a server that times out
    d.stop()

Names under ``cluster.local`` that it does not know are NXDOMAIN (``local=``); names
in ``forward`` domains go to another server (the fault server, or a second dnsmasq);
anything else is REFUSED (no upstream). The cache is off, so changes show at once.

``FaultDNS`` runs in the test's event loop and answers every query according to
``mode``: ``servfail``, ``refused``, ``nxdomain``, ``noerror`` (empty), ``drop`` (never
answers), ``delay:<seconds>`` (then answers), or ``answer`` (from ``records``; a known
name without that type is an empty NOERROR, an unknown name NXDOMAIN). ``modes`` can
override the mode per record type (``{"AAAA": "servfail"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

__all__ = ["DNSMASQ", "Dnsmasq", "FaultDNS", "dnsmasq_unavailable_reason", "free_port"]

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def dnsmasq_unavailable_reason() -> str | None:
    """Why dnsmasq tests cannot run here, or None."""
    if not os.path.exists(DNSMASQ):
        return "dnsmasq is not installed (apt: dnsmasq-base; `make test` installs it)"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now (dnsmasq binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no port free for both UDP and TCP")


def _fqdn(name: str) -> str:
    return name.rstrip(".")


class Dnsmasq:
    """One dnsmasq process with a generated configuration (see the module docstring).

    Args:
        workdir: a directory for the config, the hostsdir and the query log.
        listen: the address to listen on. port: default a free port (53 in a netns).
        prefix: command prefix, e.g. ``lab.exec_prefix(1)`` to run inside a namespace.
        local_ttl: TTL of the A/AAAA/SRV answers it makes up (``local-ttl``).
        local_domains: domains it answers alone (unknown names: NXDOMAIN).
        forward: domain -> ``"addr#port"`` of the server to ask for that domain.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        listen: str = "127.0.0.1",
        port: int | None = None,
        prefix: Sequence[str] = (),
        local_ttl: int = 1,
        local_domains: Sequence[str] = ("cluster.local",),
        forward: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hostsdir = self.workdir / "hosts.d"
        self.hostsdir.mkdir(exist_ok=True)
        self.conf_path = self.workdir / "dnsmasq.conf"
        self.log_path = self.workdir / "dnsmasq.log"
        self.listen = listen
        self.prefix = list(prefix)
        self.port = port if port is not None else (53 if prefix else free_port(listen))
        self.local_ttl = local_ttl
        self.local_domains = list(local_domains)
        self.forward = dict(forward or {})
        self.extra = list(extra)
        self.srv: dict[str, list[tuple[str, int, int, int]]] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # ------------------------------------------------------------- addresses
    @property
    def address(self) -> str:
        """``host:port`` for a ``nameserver=`` option."""
        return f"[{self.listen}]:{self.port}" if ":" in self.listen else f"{self.listen}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "dnsmasq is not running"
        return self.proc.pid

    # ---------------------------------------------------------------- records
    def set_hosts(self, records: Mapping[str, Iterable[str]], file: str = "records") -> None:
        """Replace the A/AAAA records of one hosts file (name -> addresses) atomically;
        a running dnsmasq picks the change up through inotify."""
        lines = [f"{addr} {_fqdn(name)}" for name, addrs in records.items() for addr in addrs]
        tmp = self.workdir / f".{file}.tmp"
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.hostsdir / file)

    def remove_hosts(self, file: str = "records") -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.hostsdir / file).unlink()

    def set_srv(
        self, name: str, targets: Iterable[tuple[str, int] | tuple[str, int, int, int]]
    ) -> None:
        """Set the SRV records of ``name``: (target, port[, priority, weight]). SRV
        records are configuration only, so a running dnsmasq is restarted."""
        recs = []
        for t in targets:
            prio, weight = (t[2], t[3]) if len(t) == 4 else (0, 10)
            recs.append((_fqdn(t[0]), int(t[1]), int(prio), int(weight)))
        if recs:
            self.srv[_fqdn(name)] = recs
        else:
            self.srv.pop(_fqdn(name), None)
        if self.running:
            self.restart()

    # ----------------------------------------------------------------- config
    def config(self) -> str:
        lines = [
            f"port={self.port}",
            f"listen-address={self.listen}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "keep-in-foreground",
            "pid-file=",
            "log-queries",
            f"log-facility={self.log_path}",
            "cache-size=0",  # no cache: forwarded answers are never served from memory
            f"local-ttl={self.local_ttl}",
            f"hostsdir={self.hostsdir}",
        ]
        if os.geteuid() == 0:
            lines.append("user=root")
        lines += [f"local=/{d}/" for d in self.local_domains]
        lines += [f"server=/{d}/{addr}" for d, addr in self.forward.items()]
        for name, recs in self.srv.items():
            lines += [f"srv-host={name},{t},{p},{prio},{w}" for t, p, prio, w in recs]
        lines += self.extra
        return "\n".join(lines) + "\n"

    # -------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> Dnsmasq:
        """Start and wait until it answers (or, inside a namespace, logged "started")."""
        assert not self.running, "already running"
        self.conf_path.write_text(self.config())
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.workdir / "dnsmasq.stderr", "ab") as err:  # the child keeps its copy
            self.proc = subprocess.Popen(
                [*self.prefix, DNSMASQ, f"--conf-file={self.conf_path}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}:\n{self.diagnostics()}")
            if self._ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dnsmasq not ready after {timeout} s:\n{self.diagnostics()}")
            time.sleep(0.01)

    def _ready(self) -> bool:
        if self.prefix:  # we cannot reach it from here; it logs "started" after binding
            return "started, version" in self.log()
        q = dns.message.make_query("ready.peerlink-probe.", "A")
        try:
            dns.query.udp(q, self.listen, port=self.port, timeout=0.05)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the socket stays open, queries are never answered (a timeout)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Dnsmasq:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ diagnostics
    def log(self) -> str:
        """The query log of the current run (``log-queries``)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def mark_log(self) -> int:
        """Remember the log position; ``log_since(mark)`` returns what came after."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, mark: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(mark)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        stderr = self.workdir / "dnsmasq.stderr"
        err = stderr.read_text(errors="replace") if stderr.exists() else ""
        return (f"--- {self.conf_path} ---\n{self.config()}--- stderr ---\n{err}"
                f"--- log (tail) ---\n" + "\n".join(self.log().splitlines()[-30:]))

    def __repr__(self) -> str:
        state = f"pid={self.proc.pid}" if self.running and self.proc else "stopped"
        return f"<Dnsmasq {self.address} {state}>"


class FaultDNS(asyncio.DatagramProtocol):
    """A UDP DNS server in the test's event loop that misbehaves on demand.

    ``await FaultDNS(mode).start()`` binds 127.0.0.1 on a free port; ``close()`` stops.
    ``queries`` lists (name, type) of every query received.
    """

    def __init__(
        self,
        mode: str = "servfail",
        *,
        records: Mapping[tuple[str, str], Sequence[str]] | None = None,
        modes: Mapping[str, str] | None = None,
        ttl: int = 30,
    ) -> None:
        self.mode = mode
        self.records: dict[tuple[str, str], list[str]] = {
            (_fqdn(n).lower(), t.upper()): list(v) for (n, t), v in (records or {}).items()
        }
        self.modes = {k.upper(): v for k, v in (modes or {}).items()}
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FaultDNS:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        self.host, self.port = transport.get_extra_info("sockname")[:2]
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        for t in self._timers:
            t.cancel()
        self._timers.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rdtype))
        mode = self.modes.get(rdtype, self.mode)
        response = dns.message.make_response(query)
        if mode == "drop":
            return
        if mode.startswith("delay:"):
            response.set_rcode(dns.rcode.NOERROR)
            self._fill(response, name, rdtype)
            delay = float(mode.split(":", 1)[1])
            handle = asyncio.get_running_loop().call_later(delay, self._send, response, addr)
            self._timers.add(handle)
            return
        if mode == "answer":
            self._fill(response, name, rdtype)
        else:
            response.set_rcode({
                "servfail": dns.rcode.SERVFAIL,
                "refused": dns.rcode.REFUSED,
                "nxdomain": dns.rcode.NXDOMAIN,
                "noerror": dns.rcode.NOERROR,
            }[mode])
        self._send(response, addr)

    def _fill(self, response: dns.message.Message, name: str, rdtype: str) -> None:
        response.flags |= dns.flags.AA
        values = self.records.get((name, rdtype))
        if values:
            response.answer.append(dns.rrset.from_text_list(name + ".", self.ttl, "IN", rdtype, values))
        elif not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)

    def _send(self, response: dns.message.Message, addr: tuple[str | object, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(response.to_wire(), addr)
