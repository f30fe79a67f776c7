"""The key guard the engine loads (``--middleware kanoa_local_guard.KeyGuard``), called as the
ASGI server calls it. The real engine's routes are checked in tests/integration/test_guard_engine.py."""

import asyncio
import importlib.util
import subprocess
import sys

import pytest

from kanoa_local.engine import guard

KEY = "kl-unit-test-key-0123456789"


def _module():
    spec = importlib.util.spec_from_file_location(guard.MODULE, guard.local_dir() / guard.FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _call(path, method="GET", headers=(), kind="http", keys=(KEY,), root_path=""):
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def receive():
        return {"type": "http.request"}

    async def send(msg):
        sent.append(msg)

    g = _module().KeyGuard(app, keys=list(keys))
    scope = {"type": kind, "path": path, "method": method, "root_path": root_path,
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    asyncio.run(g(scope, receive, send))
    return bool(reached), sent


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/metrics", "/version", "/load", "/v1/models",
                                  "/", "/docs", "/openapi.json", "/health/", "//health", "/HEALTH", "/v1/../health"])
def test_every_path_but_health_needs_the_key(path):
    ok, sent = _call(path)
    assert not ok and sent[0]["status"] == 401
    assert (b"www-authenticate", b'Bearer realm="kanoa-local"') in sent[0]["headers"]
    assert KEY.encode() not in sent[1]["body"]
    ok, _ = _call(path, headers=[("Authorization", f"Bearer {KEY}")])
    assert ok


def test_health_is_open_for_probes_only():
    assert _call("/health")[0] and _call("/health", method="HEAD")[0]
    assert not _call("/health", method="POST")[0]
    assert _call("/api/health", root_path="/api")[0]


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer ", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}",
                                   KEY, f"Token {KEY}"])
def test_a_wrong_or_malformed_key_is_refused(value):
    assert not _call("/v1/models", headers=[("Authorization", value)])[0]


def test_the_scheme_is_case_insensitive_and_other_methods_are_guarded():
    assert _call("/v1/models", headers=[("authorization", f"bearer {KEY}")])[0]
    for method in ("OPTIONS", "POST", "DELETE", "PUT"):
        assert not _call("/v1/chat/completions", method=method)[0]


def test_websockets_are_refused_before_the_handshake():
    ok, sent = _call("/v1/realtime", kind="websocket")
    assert not ok and sent == [{"type": "websocket.close", "code": 1008}]
    assert _call("/v1/realtime", kind="websocket", headers=[("Authorization", f"Bearer {KEY}")])[0]


def test_lifespan_passes_and_no_key_means_closed():
    assert _call("/", kind="lifespan")[0]
    assert not _call("/v1/models", keys=[], headers=[("Authorization", "Bearer ")])[0]
    assert not _call("/v1/models", keys=[], headers=[("Authorization", f"Bearer {KEY}")])[0]


def test_the_variable_is_one_key_as_vllm_reads_it():
    """vLLM takes VLLM_API_KEY whole: no splitting on commas, no stripping."""
    ok = lambda token, key: _call("/metrics", keys=[key], headers=[("Authorization", f"Bearer {token}")])[0]  # noqa: E731
    assert ok("abc,def", "abc,def") and not ok("abc", "abc,def") and not ok("def", "abc,def")
    assert not ok("b", " b")                     # the key as set, space and all


def test_the_key_comes_from_the_environment_and_the_module_needs_only_the_stdlib(tmp_path):
    """What the engine does: import it by name from PYTHONPATH, key from VLLM_API_KEY; it must
    not import anything beyond the standard library (it runs in any vLLM image)."""
    code = ("import sys, kanoa_local_guard as g; k = g.KeyGuard(None); "
            "print(len(k._keys)); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'fastapi', 'kanoa_local', 'pydantic')))")
    r = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); exec(sys.argv[2])",
                        str(guard.local_dir()), code], capture_output=True, text=True,
                       env={"VLLM_API_KEY": KEY + ",second"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["1", "[]"]
    assert [p.name for p in guard.local_dir().glob("*.py")] == [guard.FILE]


def test_the_archive_and_the_shell_writer_carry_the_same_module(tmp_path):
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(guard.tar_archive("/opt/kanoa-local"))) as tar:
        names = tar.getnames()
        assert names == ["opt", "opt/kanoa-local", f"opt/kanoa-local/{guard.FILE}"]
        assert tar.extractfile(names[-1]).read().decode() == guard.source()
    r = subprocess.run(["bash", "-c", guard.shell_writer('"$D"')], env={"D": str(tmp_path / "g")})
    assert r.returncode == 0
    assert (tmp_path / "g" / guard.FILE).read_text() == guard.source()
