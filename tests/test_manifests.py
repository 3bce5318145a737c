"""The deployment manifests: every kustomization under ``manifests/`` renders with
``kubectl kustomize`` and passes ``kubernetes-validate --strict`` (offline schemas),
and the rendered objects keep the promises the docs make (RBAC, probes, secrets)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))
OVERLAYS = [p for p in KUSTOMIZATIONS if p.parent.name == "overlays"]
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
KUBE_VERSIONS = ["1.29.0", "1.33.0"]

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) is not installed")


def render(directory: Path) -> str:
    proc = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return proc.stdout


def docs(directory: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render(directory)) if d]


def validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    if not VALIDATE.exists():
        pytest.skip("kubernetes-validate is not installed in this environment")
    return subprocess.run([str(VALIDATE), "--strict", "-k", version, str(path)],
                          capture_output=True, text=True, timeout=120)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, [o["kind"] for o in found]
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def test_layout() -> None:
    names = {p.relative_to(MANIFESTS).as_posix() for p in KUSTOMIZATIONS}
    assert {"base", "overlays/k8s-api", "overlays/dns", "overlays/statefulset", "overlays/prometheus",
            "overlays/k8s-api-clustered"} <= names


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.relative_to(MANIFESTS).as_posix())
def test_renders_and_validates_strictly(directory: Path, version: str, tmp_path: Path) -> None:
    out = tmp_path / "rendered.yaml"
    out.write_text(render(directory))
    proc = validate(out, version)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_strict_validation_catches_unknown_fields(tmp_path: Path) -> None:
    objects = docs(MANIFESTS / "overlays" / "k8s-api")
    bad = copy.deepcopy(objects)
    workload(bad)["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    out = tmp_path / "bad.yaml"
    out.write_text(yaml.safe_dump_all(bad))
    assert validate(out, KUBE_VERSIONS[0]).returncode != 0


def test_overlays_differ_only_in_discovery() -> None:
    rendered = {}
    for name in ("k8s-api", "dns"):
        objects = docs(MANIFESTS / "overlays" / name)
        container = workload(objects)["spec"]["template"]["spec"]["containers"][0]
        discovery = env_of(container)["PEERLINK_DISCOVERY"]
        rendered[name] = (discovery["value"], objects)
        discovery["value"] = "<discovery>"
    assert rendered["k8s-api"][0].startswith("k8s://")
    assert rendered["dns"][0].startswith("dns://")
    assert rendered["k8s-api"][1] == rendered["dns"][1]


def test_discovery_urls_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from peerlink.discovery import from_url

    monkeypatch.setenv("POD_NAMESPACE", "default")  # as the downward API sets it
    for directory in OVERLAYS:
        container = workload(docs(directory))["spec"]["template"]["spec"]["containers"][0]
        url = env_of(container)["PEERLINK_DISCOVERY"]["value"].replace("$(POD_NAMESPACE)", "default")
        strategy = from_url(url)
        assert strategy.scheme in url


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_rbac_grants_only_read_on_endpoints(directory: Path) -> None:
    objects = docs(directory)
    (role,) = by_kind(objects, "Role")
    rules = {(g, r): sorted(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {("discovery.k8s.io", "endpointslices"): ["get", "list", "watch"],
                     ("", "endpoints"): ["get", "list", "watch"]}
    (binding,) = by_kind(objects, "RoleBinding")
    (account,) = by_kind(objects, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]
    pod = workload(objects)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_service_pod_and_secret_fit_together(directory: Path) -> None:
    objects = docs(directory)
    (service,) = by_kind(objects, "Service")
    (secret,) = by_kind(objects, "Secret")
    work = workload(objects)
    pod = work["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    # headless, only ready pods published, a named port the pods expose
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False
    (port,) = service["spec"]["ports"]
    assert port["name"] == "peerlink"
    assert {"name": "peerlink", "containerPort": port["port"], "protocol": "TCP"} in container["ports"]
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert work["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if work["kind"] == "StatefulSet":
        assert work["spec"]["serviceName"] == service["metadata"]["name"]
    # downward API
    env = env_of(container)
    for name, path in [("POD_NAME", "metadata.name"), ("POD_IP", "status.podIP"),
                       ("POD_NAMESPACE", "metadata.namespace")]:
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == path
    # the cookie is a mounted file, never an env value
    assert "PEERLINK_COOKIE" not in env
    cookie_file = Path(env["PEERLINK_COOKIE_FILE"]["value"])
    (volume,) = [v for v in spec["volumes"] if v.get("secret")]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert cookie_file.parent == Path(mount["mountPath"]) and mount["readOnly"] is True
    assert cookie_file.name in secret["stringData"]
    # readiness gates membership; SIGTERM gets time to say goodbye
    assert container["readinessProbe"]
    assert spec["terminationGracePeriodSeconds"] >= 5
    assert env["PEERLINK_CLUSTER"]["value"]


@pytest.mark.parametrize("directory", OVERLAYS, ids=lambda p: p.name)
def test_probes_use_the_library_admin_endpoint(directory: Path) -> None:
    """Liveness and readiness probe /healthz and /readyz on the port the library's admin
    listener binds (PEERLINK_ADMIN_LISTEN), exposed as a named container port."""
    (container,) = workload(docs(directory))["spec"]["template"]["spec"]["containers"]
    listen = env_of(container)["PEERLINK_ADMIN_LISTEN"]["value"]
    port = int(listen.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ports[get["port"]] == port


def test_prometheus_overlay_annotates_the_admin_port() -> None:
    pod = workload(docs(MANIFESTS / "overlays" / "prometheus"))["spec"]["template"]
    notes = pod["metadata"]["annotations"]
    (container,) = pod["spec"]["containers"]
    listen = env_of(container)["PEERLINK_ADMIN_LISTEN"]["value"]
    assert notes == {"prometheus.io/scrape": "true", "prometheus.io/port": listen.rsplit(":", 1)[1],
                     "prometheus.io/path": "/metrics"}


def test_clustered_overlay_discovers_pods_that_are_not_ready_yet() -> None:
    """Readiness that needs links must discover not-ready pods too (no deadlock)."""
    from peerlink.discovery.kubernetes import Kubernetes

    (container,) = workload(docs(MANIFESTS / "overlays" / "k8s-api-clustered"))["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    strategy = Kubernetes.from_url(env["PEERLINK_DISCOVERY"]["value"] + "&namespace=default")
    assert isinstance(strategy, Kubernetes) and strategy.include_not_ready is True
    assert 0 < float(env["PEERLINK_READY_FRACTION"]["value"]) <= 1


def test_dockerfile_runs_the_example_app() -> None:
    dockerfile = (ROOT / "examples" / "Dockerfile").read_text()
    assert "examples/k8s_app.py" in dockerfile and "ENTRYPOINT" in dockerfile
    assert "EXPOSE 4370 4371" in dockerfile and ".[metrics]" in dockerfile
    image = workload(docs(MANIFESTS / "overlays" / "k8s-api"))["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("peerlink-example")


# -- the example app the image runs ---------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _http_get(port: int, path: str) -> tuple[int, str]:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_example_app_probes_and_goodbye(tmp_path: Path) -> None:
    import asyncio
    import json
    import os
    import signal
    import time

    cookie = tmp_path / "cookie"
    cookie.write_text("example-cookie\n")
    ports = [_free_port() for _ in range(4)]
    addresses = [f"127.0.0.1:{p}" for p in ports[:2]]
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PEERLINK_", "POD_"))}
        env.update(PEERLINK_CLUSTER="example", PEERLINK_COOKIE_FILE=str(cookie),
                   PEERLINK_LISTEN=addresses[i], PEERLINK_NAME=f"app-{i}",
                   PEERLINK_DISCOVERY="static://" + ",".join(addresses),
                   PEERLINK_ADMIN_LISTEN=f"127.0.0.1:{ports[2 + i]}", PEERLINK_LOG_LEVEL="INFO")
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "examples" / "k8s_app.py"), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = await _http_get(ports[2], "/readyz")
                if status == 200 and json.loads(body)["peers"] == 1:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "app-0 never became ready with one peer"
            await asyncio.sleep(0.05)
        assert (await _http_get(ports[3], "/healthz"))[0] == 200
        assert (await _http_get(ports[3], "/nosuch"))[0] == 404
        status, metrics = await _http_get(ports[3], "/metrics")
        assert status == 200 and "peerlink_peers 1.0" in metrics
        procs[1].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(procs[1].wait(), 10) == 0
        stderr = (await asyncio.wait_for(procs[1].stderr.read(), 5)).decode()  # type: ignore[union-attr]
        assert "SIGTERM: saying goodbye to 1 peer(s)" in stderr
        procs[0].send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(procs[0].wait(), 10) == 0
        log0 = (await asyncio.wait_for(procs[0].stderr.read(), 5)).decode()  # type: ignore[union-attr]
        assert "leave app-1: shutdown" in log0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
