"""A real avahi-daemon in a network namespace, on a private D-Bus (TEST-ENV.md §2).

avahi-daemon needs D-Bus; the system bus is never touched. ``Avahi`` starts a private
``dbus-daemon`` on a socket in ``workdir`` and points the daemon and every client at it
with ``DBUS_SYSTEM_BUS_ADDRESS``. The daemon runs through ``ip netns exec NS`` with a
tmpfs on ``/run`` (that command gives it a private mount namespace), so its fixed pid
file never reaches the host::

    avahi = await Avahi.start(lab.ns(1), tmp_path / "avahi")
    try:
        pub = await avahi.publish("avnode", "_peerlink._tcp", 7001, {"cluster": "c"})
        rows = await avahi.browse("_peerlink._tcp", until=lambda r: r.name == "x")
        await avahi.unpublish(pub)        # SIGTERM: avahi withdraws (goodbye)
    finally:
        await avahi.close()

Clients run in the daemon's namespace: avahi-browse maps interface indexes to names
locally. Never start this in the root network namespace (it multicasts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Avahi", "BrowseRow", "avahi_unavailable_reason", "parse_browse_line"]

_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={sock}</listen><auth>EXTERNAL</auth>
 <policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
 <allow receive_sender="*"/></policy>
</busconfig>
"""

_DAEMON_CONF = """[server]
host-name={host}
use-ipv4=yes
use-ipv6=yes
allow-interfaces={interfaces}
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
"""


def _open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def avahi_unavailable_reason() -> str | None:
    """Why avahi tests cannot run here, or None."""
    for tool, package in (("avahi-daemon", "avahi-daemon"), ("avahi-browse", "avahi-utils"),
                          ("avahi-publish", "avahi-utils"), ("dbus-daemon", "dbus")):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt: {package})"
    if os.geteuid() != 0:
        return "needs root (ip netns exec, mount)"
    return None


@dataclass(frozen=True, slots=True)
class BrowseRow:
    """One resolved line of ``avahi-browse -r -p`` (``=;eth0;IPv4;name;type;...``)."""

    interface: str
    protocol: str  # "IPv4" / "IPv6"
    name: str
    type: str
    host: str
    address: str
    port: int
    txt: dict[str, str]


def _unescape(text: str) -> str:
    # avahi-browse -p escapes ';', '\\' and non-printables as \DDD (decimal)
    out, i = bytearray(), 0
    raw = text.encode()
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1:i + 4].isdigit() and len(raw[i + 1:i + 4]) == 3:
            out.append(int(raw[i + 1:i + 4]))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="replace")


def parse_browse_line(line: str) -> BrowseRow | None:
    """Parse a resolved (``=``) line; other lines give None."""
    parts = line.rstrip("\n").split(";")
    if len(parts) < 10 or parts[0] != "=":
        return None
    txt: dict[str, str] = {}
    rest = ";".join(parts[9:]).strip()
    # TXT items are "quoted" and separated by spaces
    for item in rest.split('" "'):
        item = item.strip('"')
        if not item:
            continue
        key, _, value = _unescape(item).partition("=")
        txt[key] = value
    return BrowseRow(parts[1], parts[2], _unescape(parts[3]), parts[4], parts[6], parts[7],
                     int(parts[8]), txt)


class Avahi:
    """A private dbus-daemon plus avahi-daemon serving namespace ``ns``."""

    def __init__(self, ns: str, workdir: Path) -> None:
        self.ns = ns
        self.workdir = workdir
        self.bus = workdir / "bus.sock"
        self.dbus: asyncio.subprocess.Process | None = None
        self.daemon: asyncio.subprocess.Process | None = None
        self.clients: list[asyncio.subprocess.Process] = []

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus}"}

    @classmethod
    async def start(cls, ns: str, workdir: Path, *, interfaces: str = "eth0",
                    timeout: float = 15.0) -> Avahi:
        self = cls(ns, workdir)
        try:
            await self._start(interfaces, timeout)
        except BaseException:
            await self.close()
            raise
        return self

    async def _start(self, interfaces: str, timeout: float) -> None:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        (d / "bus.conf").write_text(_BUS_CONF.format(sock=self.bus))
        (d / "avahi-daemon.conf").write_text(_DAEMON_CONF.format(
            host=self.ns.replace("_", "-")[:60], interfaces=interfaces))
        deadline = time.monotonic() + timeout
        log = _open_log(d / "dbus.log")
        try:
            self.dbus = await asyncio.create_subprocess_exec(
                "dbus-daemon", f"--config-file={d / 'bus.conf'}", "--nofork",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            os.close(log)
        while not self.bus.exists():
            self._check_alive(self.dbus, "dbus-daemon", d / "dbus.log")
            if time.monotonic() > deadline:
                raise AssertionError(f"dbus-daemon did not create {self.bus} in {timeout:g}s")
            await asyncio.sleep(0.01)
        log_path = d / "avahi.log"
        log = _open_log(log_path)
        try:
            self.daemon = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.ns, "sh", "-c",
                "mount -t tmpfs tmpfs /run && exec avahi-daemon --no-chroot --no-drop-root "
                f"--no-rlimits -f {d / 'avahi-daemon.conf'}",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        finally:
            os.close(log)
        while b"Server startup complete" not in log_path.read_bytes():
            self._check_alive(self.daemon, "avahi-daemon", log_path)
            if time.monotonic() > deadline:
                raise AssertionError(f"avahi-daemon did not start in {timeout:g}s:\n"
                                     + log_path.read_text(errors="replace"))
            await asyncio.sleep(0.02)

    @staticmethod
    def _check_alive(proc: asyncio.subprocess.Process, what: str, log: Path) -> None:
        if proc.returncode is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n"
                                 + log.read_text(errors="replace"))

    def log(self) -> str:
        try:
            return (self.workdir / "avahi.log").read_text(errors="replace")
        except OSError:
            return ""

    async def publish(self, name: str, type_: str, port: int, txt: Mapping[str, str] | list[str],
                      *, timeout: float = 15.0) -> asyncio.subprocess.Process:
        """``avahi-publish -s NAME TYPE PORT TXT...``; returns once avahi reports the
        service established. TXT items are ``key=value`` (a list allows raw items)."""
        items = [f"{k}={v}" for k, v in txt.items()] if isinstance(txt, Mapping) else list(txt)
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns, "avahi-publish", "-s", name, type_, str(port), *items,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env)
        self.clients.append(proc)
        assert proc.stdout is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = (await proc.stdout.readline()).decode(errors="replace")
                    if not line:
                        raise AssertionError(f"avahi-publish {name!r} ended: {''.join(seen)}")
                    seen.append(line)
                    if "Established under name" in line:
                        return proc
        except TimeoutError:
            raise AssertionError(f"avahi-publish {name!r} not established in {timeout:g}s: "
                                 f"{''.join(seen)}\n{self.log()}") from None

    async def unpublish(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM an ``avahi-publish``: the daemon withdraws the service (goodbye)."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            await proc.wait()

    async def browse(self, type_: str, until: Callable[[BrowseRow], bool], *,
                     timeout: float = 15.0) -> list[BrowseRow]:
        """Run ``avahi-browse -r -p TYPE`` until a resolved row satisfies ``until``;
        returns every resolved row seen. Fails (with what it saw) at the deadline."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns, "avahi-browse", "-r", "-p", type_,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=self.env)
        assert proc.stdout is not None
        rows: list[BrowseRow] = []
        lines: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await proc.stdout.readline()
                    if not raw:
                        raise AssertionError(f"avahi-browse ended early: {lines}")
                    line = raw.decode(errors="replace")
                    lines.append(line)
                    row = parse_browse_line(line)
                    if row is not None:
                        rows.append(row)
                        if until(row):
                            return rows
        except TimeoutError:
            raise AssertionError(f"avahi-browse: no matching row in {timeout:g}s; lines: {lines}"
                                 ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()

    async def close(self) -> None:
        """Stop clients, the daemon and the bus (by pid)."""
        for proc in [*self.clients, self.daemon, self.dbus]:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
