"""Config validation and from_env(): defaults, clear errors naming the field or the
variable, cookie files as Kubernetes presents them, the downward API."""

from __future__ import annotations

from pathlib import Path

import pytest

import peerlink
from peerlink import Config, ConfigError, Node
from peerlink.discovery import from_url, from_urls


def test_defaults_and_derived_timeout() -> None:
    c = Config(cluster="c", cookie="Zq8-secret", name="n")
    assert c.listen == "0.0.0.0:4370" and c.tick == 1.0 and c.effective_timeout == 4.0
    assert c.max_frame == 8 * 2**20 and c.handshake_timeout == 5.0
    assert c.cookies() == (b"Zq8-secret",)
    assert "Zq8" not in repr(c)  # the secret is never in a repr (or a log line made from it)


@pytest.mark.parametrize(("options", "message"), [
    ({"cluster": ""}, "cluster"),
    ({"cookie": ""}, "cookie"),
    ({"cookie": []}, "cookie"),
    ({"tick": -1.0}, "tick: expected a number of seconds > 0, got -1.0"),
    ({"timeout": 0.5}, "timeout: expected seconds > tick"),
    ({"listen": "nohostport:x"}, "port 'x' is not a number"),
    ({"listen": "1.2.3.4"}, "the port is missing"),
    ({"advertise": "0.0.0.0:4370"}, "wildcard"),
    ({"max_frame": 10}, "max_frame"),
    ({"discovery": ["static://x:1"]}, "not a peerlink strategy"),
])
def test_bad_options_name_the_field(options: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"cluster": "c", "cookie": "k", "name": "n"}
    base.update(options)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config(**base)  # type: ignore[arg-type]


def test_node_accepts_config_and_overrides() -> None:
    node = Node(Config.local(cluster="c", cookie="k", name="a"), name="b")
    assert node.name == "b" and node.config.tick == 0.1


def test_from_env_full(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("s3cret\n")  # as a Secret volume (or echo) presents it
    env = {
        "PEERLINK_CLUSTER": "chat", "PEERLINK_COOKIE_FILE": str(cookie),
        "POD_NAME": "chat-0", "POD_IP": "10.1.2.3", "PEERLINK_LISTEN": "0.0.0.0:4370",
        "PEERLINK_DISCOVERY": "static://10.1.2.4:4370,10.1.2.5:4370  dns://peers.default.svc:4370",
        "PEERLINK_METADATA": '{"zone": "a"}', "PEERLINK_TICK": "0.5",
    }
    c = Config.from_env(env)
    assert c.cluster == "chat" and c.cookies() == (b"s3cret",) and c.name == "chat-0"
    assert c.advertise == "10.1.2.3" and c.metadata == {"zone": "a"} and c.tick == 0.5
    assert [s.scheme for s in c.discovery] == ["static", "dns"]


def test_cookie_file_keeps_inner_newlines_and_strips_only_one(tmp_path: Path) -> None:
    cookie = tmp_path / "cookie"
    cookie.write_text("abc\n\n")
    c = Config.from_env({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE_FILE": str(cookie)}, name="n")
    assert c.cookies() == (b"abc\n",)


def test_cookie_rotation_from_files(tmp_path: Path) -> None:
    (tmp_path / "new").write_text("new\n")
    (tmp_path / "old").write_text("old")
    env = {"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE_FILE": f"{tmp_path}/new,{tmp_path}/old"}
    assert Config.from_env(env, name="n").cookies() == (b"new", b"old")


def test_pod_ipv6_is_bracketed() -> None:
    c = Config.from_env({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "POD_IP": "fd00::5"}, name="n")
    assert c.advertise == "[fd00::5]"


@pytest.mark.parametrize(("env", "message"), [
    ({}, "PEERLINK_CLUSTER: not set"),
    ({"PEERLINK_CLUSTER": "c"}, "PEERLINK_COOKIE or PEERLINK_COOKIE_FILE"),
    ({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE_FILE": "/nonexistent/cookie"}, "PEERLINK_COOKIE_FILE: cannot read"),
    ({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_TICK": "fast"}, "PEERLINK_TICK='fast': expected a number of seconds"),
    ({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_TICK": "-2"}, "PEERLINK_TICK: tick"),
    ({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_LISTEN": "[::1"}, "PEERLINK_LISTEN"),
    ({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_DISCOVERY": "nope://x"}, "PEERLINK_DISCOVERY: unknown discovery scheme 'nope'"),
    ({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_DISCOVERY": "static://h:p"}, "PEERLINK_DISCOVERY"),
    ({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_METADATA": "[1]"}, "PEERLINK_METADATA: expected a JSON object"),
    ({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_MAX_FRAME": "1.5"}, "PEERLINK_MAX_FRAME"),
])
def test_from_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env, name="n")
    assert message in str(info.value)


def test_empty_cookie_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        Config.from_env({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE_FILE": str(tmp_path / "c")}, name="n")


def test_static_urls() -> None:
    s = from_url("static://10.0.0.5:4370,[fd00::1]:4371")
    assert isinstance(s, peerlink.Static)
    assert sorted(str(e) for e in s.endpoints) == ["10.0.0.5:4370", "[fd00::1]:4371"]
    assert from_urls("static://a:1 static://b:2")[1].describe() == "static://b:2"
    with pytest.raises(ConfigError, match="expected SCHEME://"):
        from_url("10.0.0.5:4370")
    with pytest.raises(ConfigError, match="unknown option"):
        from_url("static://a:1?interval=3")


def test_node_from_env_builds_a_node() -> None:
    node = Node.from_env({"PEERLINK_CLUSTER": "c", "PEERLINK_COOKIE": "k", "PEERLINK_NAME": "x"})
    assert node.name == "x" and node.cluster == "c"
