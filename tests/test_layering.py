"""The architecture, checked: the sans-I/O core imports no I/O, strategies do not import
the node, and every module imports alone in a fresh interpreter."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "peerlink"


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            out.add(("." * node.level) + mod)
    return out


def test_protocol_is_sans_io() -> None:
    forbidden = {"asyncio", "socket", "ssl", "time", "selectors"}
    assert not imports_of(PKG / "protocol.py") & forbidden


@pytest.mark.parametrize("module", ["errors.py", "_log.py"])
def test_leaf_modules_import_nothing_from_peerlink(module: str) -> None:
    assert not [m for m in imports_of(PKG / module) if m.startswith(".")]


def test_only_the_top_layers_import_node() -> None:
    # pubsub and presence are above the node (they use it, for types only)
    allowed = {"__init__.py", "cli.py", "demo.py", "doctor.py", "testing.py", "node.py",
               "pubsub.py", "presence.py", "_peerwatch.py"}
    offenders = [p.name for p in PKG.rglob("*.py") if p.name not in allowed
                 and p.parent.name != "admin"  # the layer above the node
                 and any(m.endswith("node") and m.startswith(".") for m in imports_of(p))]
    assert offenders == []


def module_level_imports(path: pathlib.Path) -> set[str]:
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            out.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_nothing_below_the_admin_layer_imports_it() -> None:
    """The admin layer sits above the node: only the CLI imports it, and node.py only
    inside a function (when ``admin_listen`` is set), never at module level."""
    importers = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if p.parent.name != "admin"
                 and any("admin" in m.split(".") for m in imports_of(p))}
    assert importers <= {"node.py", "cli.py"}
    assert not [m for m in module_level_imports(PKG / "node.py") if "admin" in m]


def test_a_node_without_admin_listen_pays_nothing_for_it() -> None:
    """No import of the admin layer or prometheus_client, no admin task."""
    code = """
import asyncio, sys, peerlink
async def main():
    async with peerlink.Node(peerlink.Config.local(cluster="c", cookie="k", name="a")) as node:
        names = {t.get_name() for t in asyncio.all_tasks()}
    loaded = [m for m in sys.modules if m.startswith(("peerlink.admin", "prometheus_client"))]
    assert not loaded, loaded
    assert not [n for n in names if "admin" in n], names
asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_messaging_does_not_import_membership() -> None:
    assert ".membership" not in imports_of(PKG / "messaging.py")


MODULES = sorted(
    "peerlink." + str(p.relative_to(PKG).with_suffix("")).replace("/", ".")
    for p in PKG.rglob("*.py") if p.name not in ("__main__.py", "__init__.py")
)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


ABOVE_THE_LINKS = ["pubsub.py", "presence.py", "presence_state.py", "_peerwatch.py", "_feed.py"]


def test_nothing_below_imports_the_layers_above_the_links() -> None:
    above = {"." + name[:-3] for name in ABOVE_THE_LINKS}
    offenders = [p.name for p in PKG.rglob("*.py")
                 if p.name not in ABOVE_THE_LINKS and p.name != "__init__.py"
                 and imports_of(p) & above]
    assert offenders == []


@pytest.mark.parametrize("module", ABOVE_THE_LINKS)
def test_layers_above_the_links_use_only_the_public_node_api(module: str) -> None:
    below = {".link", ".membership", ".messaging", ".protocol", ".discovery", ".config"}
    assert not imports_of(PKG / module) & below


def test_presence_state_is_sans_io() -> None:
    assert not imports_of(PKG / "presence_state.py") & {"asyncio", "socket", "ssl", "time"}


def test_import_peerlink_does_not_import_pubsub_or_presence() -> None:
    code = ("import sys, peerlink; loaded = {'peerlink.pubsub', 'peerlink.presence', "
            "'peerlink.presence_state', 'peerlink._peerwatch', 'peerlink._feed'} & set(sys.modules);"
            " assert not loaded, loaded; peerlink.PubSub; peerlink.Presence")
    subprocess.run([sys.executable, "-c", code], check=True)
