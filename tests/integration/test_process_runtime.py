"""`up` / `status` / `logs` / `down` / `ps` on the process runtime, with the real vLLM CPU engine
(the harness venv) serving the tiny model: the whole lifecycle, a diagnosed failure, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from kanoa_local.deploy import PsReport, StatusReport, UpResult
from kanoa_local.runtimes.process import ProcessRuntime, members
from kanoa_local.state import ProcessPlace
from kanoa_local.state import load as load_record
from tests.conftest import ROOT, cli_env, default_signals, free_port, http, make_tiny_model, run_cli

pytestmark = pytest.mark.engine


def running(dep) -> bool:
    return ProcessRuntime().liveness(dep).alive


def up(cpu_venv, model, *extra, timeout=400):
    return run_cli("up", "--model-path", str(model), "--python", str(cpu_venv / "bin" / "python"),
                   "--json", *extra, timeout=timeout)


def test_lifecycle_on_the_process_runtime(cpu_venv, tiny_model):
    port = free_port()
    r = up(cpu_venv, tiny_model, "--name", "t1", "--port", str(port))
    assert r.returncode == 0, r.stderr[-2000:]
    res = UpResult.model_validate_json(r.stdout)
    dep = res.deployment
    assert dep.host == "127.0.0.1" and dep.port == port and running(dep)
    assert [s.stage for s in res.ready.stages][-1] == "first token"
    assert oct(os.stat(res.api_key_file).st_mode & 0o777) == "0o600"
    key = open(res.api_key_file).read().strip()
    assert key not in r.stdout and key not in r.stderr          # the key is never printed

    # what the engine reported is recorded, and the next plan of it says "measured"
    from kanoa_local import runs

    told = res.ready.figures
    assert told.kv_tokens and [x.kv_tokens for x in runs.load_all() if x.model_id == dep.model_id] == [told.kv_tokens]
    chosen = json.loads(run_cli("plan", str(tiny_model), "--cpu", "--json").stdout)["plan"]["chosen"]
    assert chosen["confidence"]["kv_cache"] == "measured" and chosen["measured"]["kv_tokens"] == told.kv_tokens

    # a real chat through the openai client, and 401 without the key
    from openai import OpenAI

    client = OpenAI(base_url=res.base_url, api_key=key)
    out = client.chat.completions.create(model=dep.served_model_name, max_tokens=4,
                                         messages=[{"role": "user", "content": "mean of sales?"}])
    assert out.usage.completion_tokens >= 1
    status, _ = http("GET", f"{res.base_url}/models")
    assert status == 401

    # a second up of the same plan returns at once
    t0 = time.monotonic()
    again = UpResult.model_validate_json(up(cpu_venv, tiny_model, "--name", "t1", "--port", str(port)).stdout)
    assert again.reused and again.deployment.place.pid == dep.place.pid and time.monotonic() - t0 < 15

    # the hand-off: the library finds it, and `env` gives what other tools need
    import kanoa_local

    found = kanoa_local.connect()                  # the only running deployment
    assert found.name == "t1" and found.endpoint == res.base_url
    exports = json.loads(run_cli("env", "t1", "--json").stdout)
    assert exports["OPENAI_BASE_URL"] == res.base_url and exports["OPENAI_API_KEY"] == key
    reply = OpenAI(base_url=exports["OPENAI_BASE_URL"], api_key=exports["OPENAI_API_KEY"]).completions.create(
        model=exports["KANOA_LOCAL_MODEL"], prompt="total", max_tokens=2)
    assert reply.usage.completion_tokens >= 1
    assert found.openai().models.list().data[0].id == dep.served_model_name
    assert run_cli("env", "t1").stdout.startswith("export OPENAI_BASE_URL=")

    st = StatusReport.model_validate_json(run_cli("status", "t1", "--json").stdout)
    assert st.state == "running" and st.healthy
    assert st.metrics.generation_tokens >= 1 and st.metrics.prompt_tokens >= 1
    ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
    assert [(d.name, d.state) for d in ps.deployments] == [("t1", "running")]
    logs = run_cli("logs", "t1", "--tail", "50", "--json")
    assert logs.returncode == 0 and len(json.loads(logs.stdout)["lines"]) == 50 and "Application startup complete" in run_cli("logs", "t1").stdout

    # down leaves no process, no state, and the port free
    d = run_cli("down", "t1")
    assert d.returncode == 0 and "t1" in d.stdout
    assert not running(dep) and not members(dep.place)
    assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []
    assert run_cli("status", "t1").returncode == 8


def test_engine_that_dies_at_the_first_request_is_diagnosed(cpu_venv):
    """head_dim 16: the CPU engine loads, answers /health, then dies on the first request."""
    bad = make_tiny_model(cpu_venv, "--heads", "8", "--kv-heads", "8", "--head-dim", "16",
                          "--name", "tiny-hd16")
    port = free_port()
    r = up(cpu_venv, bad, "--name", "bad", "--port", str(port))
    assert r.returncode == 7, r.stdout + r.stderr
    err = json.loads(r.stdout)["error"]
    assert "head_dim 16" in err["message"] and err["remedy"]
    assert err["details"]["diagnosis"]["kind"] == "unsupported-head-dim"
    assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []
    status, _ = http("GET", f"http://127.0.0.1:{port}/health", timeout=3)
    assert status == 0                                            # nothing listens any more
    assert "head_dim=16" in run_cli("logs", "bad").stdout          # the log stays readable


def test_missing_model_dir_and_missing_vllm_are_one_line_errors(tmp_path, cpu_venv, tiny_model):
    r = run_cli("up", "--model-path", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr
    r = run_cli("up", "--model-path", str(tiny_model), "--python", sys.executable)
    assert r.returncode == 6 and "has no vLLM" in r.stderr and "kanoa-local engine install --cpu" in r.stderr


def test_two_deployments_a_busy_port_and_a_killed_engine(cpu_venv, tiny_model):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        a = UpResult.model_validate_json(up(cpu_venv, tiny_model, "--name", "a", "--port", str(port)).stdout)
        assert a.deployment.port != port and any("in use" in n for n in a.notes)
        b = UpResult.model_validate_json(up(cpu_venv, tiny_model, "--name", "b", "--port", str(free_port())).stdout)
        ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
        assert sorted(d.name for d in ps.deployments) == ["a", "b"]
        # the engine dies under us: status says so at once
        os.killpg(os.getpgid(b.deployment.place.pid), signal.SIGKILL)
        time.sleep(1)
        st = StatusReport.model_validate_json(run_cli("status", "b", "--json").stdout)
        assert st.state == "dead" and not st.healthy
        assert {d.name: d.state for d in PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments} \
            == {"a": "running", "b": "dead"}
    finally:
        busy.close()
        run_cli("down", "--all")
    assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []


def test_too_long_context_is_retried_with_what_vllm_says_fits(cpu_venv):
    """A plan that asks for more context than the KV cache holds: vLLM names the length that
    fits, `up` retries once with it and says so."""
    from kanoa_local import deploy
    from kanoa_local.catalog import Catalog
    from kanoa_local.unlisted import entry_from_directory
    from kanoa_local.plan import PlanRequest, plan
    from kanoa_local.probe import probe

    model = make_tiny_model(cpu_venv, "--layers", "12", "--heads", "8", "--kv-heads", "2", "--head-dim", "128",
                            "--hidden", "1024", "--intermediate", "2816", "--dtype", "bfloat16",
                            "--max-len", "1048576", "--name", "long-ctx")
    entry = entry_from_directory(model)
    c = plan(probe(docker=False), Catalog(models={entry.id: entry}), PlanRequest(model=entry.id)).chosen
    assert c is not None and c.settings.cpu_kv_cache_gib == 1
    too_long = c.model_copy(update={"settings": c.settings.model_copy(update={"max_model_len": 200_000})})
    res = deploy.up(too_long, name="retry", port=free_port(), runtime="process",
                    python=str(cpu_venv / "bin" / "python"), model_dir=str(model), timeout=400)
    try:
        assert any("retried with --max-model-len 43520" in n for n in res.notes), res.notes
        assert "--max-model-len" in res.deployment.spec.argv
        assert res.deployment.spec.argv[res.deployment.spec.argv.index("--max-model-len") + 1] == "43520"
    finally:
        deploy.down("retry")


def test_library_up_and_connect(cpu_venv, tiny_model):
    """`kanoa_local.up()` is what the CLI does, as a function: a Deployment back."""
    import kanoa_local
    from kanoa_local import deploy

    dep = kanoa_local.up(model_path=str(tiny_model), python=str(cpu_venv / "bin" / "python"),
                         name="lib", port=free_port(), runtime="process")
    try:
        assert dep.runtime == "process" and kanoa_local.connect("lib").place.pid == dep.place.pid
        assert dep.openai().completions.create(model=dep.model, prompt="x", max_tokens=1).usage.completion_tokens == 1
    finally:
        deploy.down("lib")
    with pytest.raises(kanoa_local.KanoaError):
        kanoa_local.connect("lib")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_ctrl_c_sigterm_and_sighup_during_up_clean_up(cpu_venv, tiny_model, sig, code):
    """Ctrl-C, a closed terminal or a CI timeout during `up`: one cleanup, nothing left."""
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "kanoa_local", "up", "--model-path", str(tiny_model),
                          "--python", str(cpu_venv / "bin" / "python"), "--name", "sig", "--port", str(port)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=default_signals, env=cli_env())
    rec = os.path.join(os.environ["KANOA_LOCAL_HOME"], "state", "deployments", "sig.json")
    deadline = time.monotonic() + 60
    while not os.path.exists(rec) and time.monotonic() < deadline:
        time.sleep(0.2)
    launch = ProcessPlace(**json.load(open(rec))["place"])
    time.sleep(2)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert ("interrupted" if sig == signal.SIGINT else "SIG") in err
    assert "Traceback" not in err and not members(launch) and not os.path.exists(rec)
    assert http("GET", f"http://127.0.0.1:{port}/health", timeout=3)[0] == 0


def test_a_reused_pid_is_never_signalled(cpu_venv, tiny_model):
    """A record whose pid now belongs to another process (here a `sleep`): `ps` says dead,
    `down` and `down --all` leave that process alone."""
    from kanoa_local import state

    res = UpResult.model_validate_json(up(cpu_venv, tiny_model, "--name", "reuse", "--port", str(free_port())).stdout)
    run_cli("down", "reuse")
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        dep = res.deployment
        stale = dep.model_copy(update={"place": dep.place.model_copy(update={"pid": sleeper.pid})})
        state.save(stale)
        state.new_api_key("reuse")
        ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
        assert [(d.name, d.state) for d in ps.deployments] == [("reuse", "dead")]
        assert run_cli("down", "--all").returncode == 0
        time.sleep(0.5)
        assert sleeper.poll() is None               # still sleeping
        assert not state.record_path("reuse").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_ups_of_one_name_start_one_server(cpu_venv, tiny_model):
    """Two real `up` processes at once: one starts, the other waits and reuses it; one server,
    one key that works."""
    port = free_port()
    argv = [sys.executable, "-m", "kanoa_local", "up", "--model-path", str(tiny_model), "--python",
            str(cpu_venv / "bin" / "python"), "--name", "race", "--port", str(port), "--json"]
    ps_ = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
           for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in ps_]
    try:
        assert [p.returncode for p in ps_] == [0, 0], [e[-1500:] for _, e in outs]
        results = [UpResult.model_validate_json(o) for o, _ in outs]
        assert sorted(r.reused for r in results) == [False, True]
        assert len({r.deployment.place.launch_id for r in results}) == 1
        key = open(results[0].api_key_file).read().strip()
        from openai import OpenAI

        out = OpenAI(base_url=results[0].base_url, api_key=key).completions.create(
            model=results[0].deployment.served_model_name, prompt="x", max_tokens=1)
        assert out.usage.completion_tokens == 1
        found, _ = ProcessRuntime().discover()
        assert [f.name for f in found] == ["race"]
    finally:
        run_cli("down", "race")


def test_a_port_taken_while_starting_moves_up_to_the_next(cpu_venv, tiny_model):
    """The race of two starts on one port, made real: `up --port P` checks P free, and another
    server (one that wants its own key, as another user's vLLM would) takes P while the engine
    loads. Whichever binds first, `up` sees that P is not its own server — its key refused —
    stops its engine, starts again on the next free port and says so."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Theirs(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _refuse

        def log_message(self, *args) -> None:  # noqa: D401 - quiet
            pass

    port = free_port()
    argv = [sys.executable, "-m", "kanoa_local", "up", "--model-path", str(tiny_model), "--python",
            str(cpu_venv / "bin" / "python"), "--name", "portrace", "--port", str(port), "--json"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    server = None
    try:
        time.sleep(4)                     # `up` has checked the port; its engine is still loading
        server = HTTPServer(("127.0.0.1", port), Theirs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, (out + err)[-2000:]
        res = UpResult.model_validate_json(out)
        assert res.deployment.port > port
        assert any(f"port {port} was taken while starting" in n for n in res.notes), res.notes
        key = open(res.api_key_file).read().strip()
        assert http("GET", res.base_url + "/models", api_key=key)[0] == 200
        assert len(members(res.deployment.place)) >= 1          # one server: the first attempt is gone
        assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments[0].name == "portrace"
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        if proc.poll() is None:
            proc.kill()
        run_cli("down", "portrace")


def test_orphans_are_listed_removable_and_never_block_up(cpu_venv, tiny_model):
    """A server whose record is lost (a crash between start and save) is found by its
    environment marker: `ps` lists it, and `up` of its name clears it first; `down NAME` of an
    orphan removes it. When the API server dies, its engine processes go with `down`."""
    from kanoa_local import state

    a = UpResult.model_validate_json(up(cpu_venv, tiny_model, "--name", "orph", "--port", str(free_port())).stdout)
    state.record_path("orph").unlink()
    ps = PsReport.model_validate_json(run_cli("ps", "--json").stdout)
    [row] = ps.deployments
    assert row.name == "orph" and row.orphan and row.state == "running"
    b = UpResult.model_validate_json(up(cpu_venv, tiny_model, "--name", "orph", "--port", str(free_port())).stdout)
    assert not b.reused and any("no record" in n for n in b.notes), b.notes
    assert not members(a.deployment.place)
    # the API server dies; its engine core and workers (renamed VLLM::..., so their environment
    # no longer shows) are the deployment's still, and `down` stops them
    engine = [p for p in members(b.deployment.place) if p.pid != b.deployment.place.pid]
    assert engine, "the engine core runs in the server's session"
    os.kill(b.deployment.place.pid, signal.SIGKILL)
    time.sleep(1)
    st = StatusReport.model_validate_json(run_cli("status", "orph", "--json").stdout)
    assert st.state == "dead" and "remain" in st.reason, st.reason
    d = run_cli("down", "orph")
    assert d.returncode == 0, d.stderr
    assert not members(b.deployment.place)
    r = run_cli("down", "orph")
    assert r.returncode == 8 and "no deployment named 'orph'" in r.stderr


def test_replace_is_a_swap_and_a_failed_replacement_keeps_the_old(cpu_venv, tiny_model):
    """`--replace`: the old one serves until the new one is ready, then goes. A replacement that
    fails to start leaves the old one running with its record and key."""
    from openai import OpenAI

    a = UpResult.model_validate_json(up(cpu_venv, tiny_model, "--name", "sw", "--port", str(free_port())).stdout)
    key_a = open(a.api_key_file).read().strip()
    bad = make_tiny_model(cpu_venv, "--heads", "8", "--kv-heads", "8", "--head-dim", "16", "--name", "tiny-hd16")
    r = up(cpu_venv, bad, "--name", "sw", "--port", str(free_port()), "--replace")
    assert r.returncode == 7, r.stderr[-1500:]
    assert running(a.deployment) and open(a.api_key_file).read().strip() == key_a
    assert load_record("sw").place.launch_id == a.deployment.place.launch_id
    OpenAI(base_url=a.base_url, api_key=key_a).completions.create(model=a.deployment.served_model_name,
                                                                 prompt="x", max_tokens=1)
    # vLLM's own arguments go through exactly as given (the engine reports the context it got)
    r = up(cpu_venv, tiny_model, "--name", "sw", "--port", str(free_port()), "--replace", "--max-model-len", "1000",
           "--max-num-seqs", "8")
    assert r.returncode == 0, r.stderr[-1500:]
    b = UpResult.model_validate_json(r.stdout)
    assert any("once the new one was ready" in n for n in b.notes), b.notes
    argv = b.deployment.spec.argv
    assert argv[argv.index("--max-num-seqs") + 1] == "8"
    models = OpenAI(base_url=b.base_url, api_key=open(b.api_key_file).read().strip()).models.list()
    assert models.data[0].model_extra["max_model_len"] == 1000
    assert not members(a.deployment.place) and running(b.deployment)
    assert "Application startup complete" in run_cli("logs", "sw").stdout
    run_cli("down", "sw")


def test_remote_code_runs_only_when_asked(cpu_venv, tiny_model, tmp_path):
    """A checkpoint whose config.json has auto_map makes vLLM import the directory's own Python
    module. Without --trust-remote-code `up` refuses in one line naming the file, before
    anything starts (the module never runs); with it, the module runs and the model serves."""
    import shutil

    model = tmp_path / "custom"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    (model / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "ran"
    (model / "configuration_custom.py").write_text(
        "import os, pathlib\n"
        "from transformers import LlamaConfig\n"
        "if os.environ.get('KANOA_TEST_MARKER'):\n"
        "    pathlib.Path(os.environ['KANOA_TEST_MARKER']).write_text('ran')\n\n\n"
        "class CustomConfig(LlamaConfig):\n"
        "    pass\n")
    py = str(cpu_venv / "bin" / "python")
    env = {"KANOA_TEST_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    plan = run_cli("plan", str(model), "--json", env=env)
    assert plan.returncode == 2 and json.loads(plan.stdout)["plan"]["chosen"] is None   # as `up` refuses it
    r = run_cli("up", "--model-path", str(model), "--python", py, "--name", "rc", "--port", str(free_port()), env=env)
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()[:1]
    assert "configuration_custom.py" in line and "--trust-remote-code" in r.stderr
    assert not marker.exists() and PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []
    r = run_cli("up", "--model-path", str(model), "--python", py, "--name", "rc", "--port", str(free_port()),
                "--trust-remote-code", "--json", env=env, timeout=400)
    try:
        assert r.returncode == 0, r.stderr[-2000:]
        assert marker.read_text() == "ran"
        assert "--trust-remote-code" in UpResult.model_validate_json(r.stdout).deployment.spec.argv
    finally:
        assert run_cli("down", "rc").returncode == 0


def test_https_with_the_users_certificate(cpu_venv, tiny_model, tmp_path):
    """`up --ssl-certfile/--ssl-keyfile`: vLLM serves HTTPS itself; readiness, status, the
    guard, and the handed clients (OpenAI and kanoa's interpreter) verify it against that
    certificate; plain HTTP gets nothing; a certificate that does not name the address is one
    line and leaves nothing running."""
    import ssl

    from kanoa_local import connect
    from kanoa_local.state import read_api_key
    from tests.conftest import HTTPS_CONTEXT, assert_closed_but_health, tls_pair

    cert, key = tls_pair(tmp_path / "good")
    port = free_port()
    r = up(cpu_venv, tiny_model, "--name", "tls", "--port", str(port), "--ssl-certfile", str(cert),
           "--ssl-keyfile", str(key), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = UpResult.model_validate_json(r.stdout)
    assert res.base_url == f"https://127.0.0.1:{port}/v1"
    assert "--ssl-certfile" in res.deployment.spec.argv
    try:
        st = StatusReport.model_validate_json(run_cli("status", "tls", "--json").stdout)
        assert st.healthy and st.metrics is not None         # /health and /metrics over HTTPS, verified
        assert http("GET", f"http://127.0.0.1:{port}/health")[0] == 0      # no plain HTTP
        ctx = ssl.create_default_context(cafile=str(cert))
        HTTPS_CONTEXT[0] = ctx
        assert_closed_but_health(f"https://127.0.0.1:{port}", read_api_key(res.deployment))
        dep = connect("tls")
        chat = dep.openai().chat.completions.create(model=dep.model, max_tokens=3,
                                                    messages=[{"role": "user", "content": "hi"}])
        assert chat.usage.completion_tokens >= 1
        answer = dep.interpreter(max_tokens=4).interpret(data="x = [1, 2, 3]", stream=False, display_result=False)
        assert answer.text and answer.usage is not None and answer.usage.output_tokens > 0
        env = json.loads(run_cli("env", "tls", "--json").stdout)
        assert env["OPENAI_BASE_URL"].startswith("https://") and env["KANOA_LOCAL_CA_FILE"] == str(cert)
    finally:
        HTTPS_CONTEXT[0] = None
        assert run_cli("down", "tls").returncode == 0
    # a certificate for another name: one line at the first probe, nothing left behind
    wcert, wkey = tls_pair(tmp_path / "wrong", names="DNS:other.invalid")
    bad = run_cli("up", "--model-path", str(tiny_model), "--python", str(cpu_venv / "bin" / "python"),
                  "--name", "tlsbad", "--port", str(port),
                  "--ssl-certfile", str(wcert), "--ssl-keyfile", str(wkey), timeout=600)
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("Error:")]
    assert bad.returncode != 0 and len(errors) == 1 and "certificate" in errors[0] and "127.0.0.1" in errors[0], bad.stderr
    assert "Traceback" not in bad.stderr
    assert PsReport.model_validate_json(run_cli("ps", "--json").stdout).deployments == []
    # a key that is not the certificate's: refused before anything starts
    mism = run_cli("up", "--model-path", str(tiny_model), "--python", str(cpu_venv / "bin" / "python"),
                   "--name", "tlsbad", "--ssl-certfile", str(cert),
                   "--ssl-keyfile", str(wkey))
    assert mism.returncode == 2 and "cannot serve TLS" in mism.stderr
