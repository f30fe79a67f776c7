"""The hand-off on real parts: kanoa's AnalyticsInterpreter, the openai client and the CLI's
session/env/plugin against the real vLLM CPU engine serving the tiny model (random weights:
the text is noise, the tokens, usage and metrics are real).

One deployment is shared by the module (session-scoped home); a second one is started for the
two-endpoint case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_closed_but_health, cli_env, free_port, http, run_cli

pytestmark = pytest.mark.engine
RATE = 0.5     # USD per 1M tokens: not the default, to prove the rate is the deployment's


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("handoff-home")


@pytest.fixture(scope="module")
def pricing_home(tmp_path_factory) -> Path:
    """kanoa reads its user pricing file under the home directory; keep the developer's own out."""
    return tmp_path_factory.mktemp("user-home")


@pytest.fixture
def env_home(home, pricing_home, monkeypatch):
    monkeypatch.setenv("KANOA_LOCAL_HOME", str(home))
    import kanoa.pricing

    monkeypatch.setattr(kanoa.pricing, "USER_CONFIG_PATH", pricing_home / ".config" / "kanoa" / "pricing.json")
    return home


@pytest.fixture(scope="module")
def served(home, cpu_venv, tiny_model):
    """The tiny model on the process runtime, started by kanoa-local's library `up`."""
    import kanoa_local

    old = os.environ.get("KANOA_LOCAL_HOME")
    os.environ["KANOA_LOCAL_HOME"] = str(home)
    try:
        dep = kanoa_local.up(model_path=str(tiny_model), name="text", port=free_port(),
                             python=str(cpu_venv / "bin" / "python"), max_tokens=8, temperature=0.0,
                             cost_per_mtok=RATE, timeout=400)
        yield dep
    finally:
        from kanoa_local import deploy

        deploy.down(all_=True)
        if old is None:
            os.environ.pop("KANOA_LOCAL_HOME", None)
        else:
            os.environ["KANOA_LOCAL_HOME"] = old


def metric(dep, name: str) -> float:
    from kanoa_local.state import read_api_key

    status, text = http("GET", dep.base_url.rsplit("/v1", 1)[0] + "/metrics", api_key=read_api_key(dep))
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def sales():
    import pandas as pd

    return pd.DataFrame({"month": ["Jan", "Feb", "Mar"], "units": [120, 135, 160]})


def test_interpret_returns_text_usage_and_cost_at_the_deployments_rate(served, env_home):
    interp = served.interpreter()
    assert interp.backend.model == served.model and interp.backend.max_tokens == 8
    before = metric(served, "vllm:prompt_tokens_total")
    r = interp.interpret(data=sales(), context="monthly sales", stream=False, display_result=False)
    assert r.text and r.usage is not None
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 8
    # Check point: the estimate is (input + output) tokens at the deployment's rate, via kanoa itself
    assert r.usage.cost == pytest.approx((r.usage.input_tokens + r.usage.output_tokens) / 1e6 * RATE)
    assert interp.get_cost_summary()["total_cost_usd"] == pytest.approx(r.usage.cost)
    # the tokens kanoa counted are the tokens the server counted
    assert metric(served, "vllm:prompt_tokens_total") - before == r.usage.input_tokens


def test_streaming_yields_text_and_a_final_usage(served, env_home):
    chunks = list(served.interpreter().interpret(context="monthly sales", stream=True, display_result=False))
    assert any(c.type == "text" and c.content for c in chunks)
    final = chunks[-1]
    assert final.type == "usage" and final.usage is not None and final.usage.cost > 0


def test_a_figure_for_a_text_only_model_is_refused_before_any_request(served, env_home):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kanoa_local.errors import VisionNotSupported

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    before = metric(served, "vllm:request_success_total"), metric(served, "vllm:prompt_tokens_total")
    with pytest.raises(VisionNotSupported) as info:
        served.interpreter().interpret(fig=fig, stream=False, display_result=False)
    plt.close(fig)
    assert "text-only" in info.value.message and "\n" not in info.value.message
    # the machine's fitting vision models (or why none fits) are named
    assert "vision model" in info.value.message
    assert (metric(served, "vllm:request_success_total"), metric(served, "vllm:prompt_tokens_total")) == before


def test_the_knowledge_base_reaches_the_server(served, env_home, tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "glossary.md").write_text("units: items sold. " * 60)
    base = served.interpreter()
    plain = base.interpret(context="monthly sales", stream=False, display_result=False)
    with_kb = base.with_kb(kb_path=kb, kb_type="text")
    before = metric(served, "vllm:prompt_tokens_total")
    grounded = with_kb.interpret(context="monthly sales", stream=False, display_result=False)
    grown = grounded.usage.input_tokens - plain.usage.input_tokens
    # Check point: the prompt grew by about the KB's size (300 words), and the server saw it
    assert grown >= 200, (plain.usage, grounded.usage)
    assert metric(served, "vllm:prompt_tokens_total") - before == grounded.usage.input_tokens
    # a single file works too; a folder with no text is an error, not a silently empty KB
    assert base.with_kb(kb_path=kb / "glossary.md").interpret(
        context="x", stream=False, display_result=False).usage.input_tokens >= grounded.usage.input_tokens - 5
    from kanoa_local.errors import ConfigError, UsageError

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError):
        base.with_kb(kb_path=tmp_path / "empty")
    with pytest.raises(UsageError):
        base.with_kb(kb_path=kb, kb_type="pdf")


def test_two_deployments_give_two_interpreters_on_their_own_servers(served, env_home, cpu_venv, tiny_model):
    import kanoa_local

    other = kanoa_local.up(model_path=str(tiny_model), name="second", port=free_port(),
                           python=str(cpu_venv / "bin" / "python"), max_tokens=4, timeout=400)
    try:
        assert other.port != served.port
        a, b = served.interpreter(), other.interpreter()
        before = metric(served, "vllm:prompt_tokens_total"), metric(other, "vllm:prompt_tokens_total")
        ra = a.interpret(context="first", stream=False, display_result=False)
        assert metric(other, "vllm:prompt_tokens_total") == before[1]
        rb = b.interpret(context="second", stream=False, display_result=False)
        assert metric(served, "vllm:prompt_tokens_total") - before[0] == ra.usage.input_tokens
        assert metric(other, "vllm:prompt_tokens_total") - before[1] == rb.usage.input_tokens
        # connect() with two running needs a name, and says which there are
        from kanoa_local.errors import UsageError

        with pytest.raises(UsageError, match="second"):
            kanoa_local.connect()
        assert kanoa_local.connect("second").port == other.port
    finally:
        from kanoa_local import deploy

        deploy.down("second")


def test_session_exec_and_c_without_a_terminal(served, env_home, tmp_path, pricing_home):
    env = {"KANOA_LOCAL_HOME": str(env_home), "HOME": str(pricing_home)}
    script = tmp_path / "job.py"
    script.write_text("r = interp.interpret(context='sales', stream=False, display_result=False)\n"
                      "print('USAGE', r.usage.input_tokens, r.usage.output_tokens, r.usage.cost)\n"
                      "print('CLIENT', client.models.list().data[0].id, deployment.name)\n")
    r = run_cli("session", "text", "--exec", str(script), env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    usage = next(ln for ln in r.stdout.splitlines() if ln.startswith("USAGE")).split()
    assert float(usage[3]) == pytest.approx((int(usage[1]) + int(usage[2])) / 1e6 * RATE)
    assert f"CLIENT {served.model} text" in r.stdout
    assert "text-only" in r.stderr and "cost so far" in r.stderr        # the banner
    # -c, and its --json summary; a failing user statement is exit 1 with its own traceback
    r = run_cli("session", "--json", "-c", "print(type(interp).__mro__[1].__name__)", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert out[0] == "AnalyticsInterpreter"
    info = json.loads("\n".join(out[1:]))
    assert info["name"] == "text" and info["started"] is False and info["cost_usd"] > 0
    r = run_cli("session", "-c", "1/0", env=env)
    assert r.returncode == 1 and "ZeroDivisionError" in r.stderr and "session.py" not in r.stderr


def test_env_output_configures_the_openai_client(served, env_home):
    r = run_cli("env", "text", "--json", env={"KANOA_LOCAL_HOME": str(env_home)})
    assert r.returncode == 0, r.stderr
    exports = json.loads(r.stdout)
    code = ("import os, openai; c = openai.OpenAI(); "
            "print(c.chat.completions.create(model=os.environ['KANOA_LOCAL_MODEL'], max_tokens=2, "
            "messages=[{'role': 'user', 'content': 'hi'}]).usage.completion_tokens)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    p = subprocess.run([sys.executable, "-c", code], env={**clean, **exports}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-1000:]
    assert p.stdout.strip() in ("1", "2")


def test_kanoa_local_is_a_kanoa_cli_plugin(served, env_home):
    kanoa = Path(sys.executable).parent / "kanoa"
    p = subprocess.run([str(kanoa), "local", "ps", "--json"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "KANOA_LOCAL_HOME": str(env_home)}, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert [d["name"] for d in json.loads(p.stdout)["deployments"]] == ["text"]
    p = subprocess.run([str(kanoa), "local", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Usage: kanoa local" in p.stdout
    # a kanoa-local error through kanoa's CLI is still one line with its exit code
    p = subprocess.run([str(kanoa), "local", "down", "nope"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "KANOA_LOCAL_HOME": str(env_home)})
    assert p.returncode == 8 and "Traceback" not in p.stderr


def test_status_reports_the_running_cost(served, env_home):
    r = run_cli("status", "text", "--json", env={"KANOA_LOCAL_HOME": str(env_home)})
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    tokens = s["metrics"]["prompt_tokens"] + s["metrics"]["generation_tokens"]
    assert s["cost_usd"] == pytest.approx(tokens / 1e6 * RATE)


def test_no_route_but_health_answers_without_the_key(served, env_home):
    """vLLM's own --api-key covers /v1 only; kanoa-local's guard closes the rest (issue 13)."""
    from kanoa_local.state import read_api_key

    root = served.base_url.removesuffix("/v1")
    routes = assert_closed_but_health(root, read_api_key(served))
    assert len(routes) > 20, routes
    code, _ = http("POST", f"{root}/tokenize", {"model": served.served_model_name, "prompt": "hello"},
                   api_key=read_api_key(served))
    assert code == 200
    r = run_cli("status", "text", "--json", env={"KANOA_LOCAL_HOME": str(env_home)})
    assert r.returncode == 0 and json.loads(r.stdout)["metrics"] is not None, r.stderr   # status sends the key


SNIPPET = """
import json, os, sys
from kanoa import AnalyticsInterpreter

# the seed page's own construction, with the values `kanoa-local env` exports
interp = AnalyticsInterpreter(backend="vllm", api_base=os.environ["OPENAI_BASE_URL"],
                              model=os.environ["KANOA_LOCAL_MODEL"], api_key=os.environ["OPENAI_API_KEY"],
                              max_tokens=8, temperature=0.0)
res = interp.interpret(context="monthly sales: Jan 120, Feb 135", stream=False, display_result=False)
chunks = list(interp.interpret(context="monthly sales: Jan 120, Feb 135", stream=True, display_result=False))
usage = [c.usage for c in chunks if c.type == "usage" and c.usage]
print(json.dumps({"text": res.text, "input": res.usage.input_tokens, "cost": res.usage.cost,
                  "stream_usages": len(usage), "stream_cost": usage[0].cost if usage else None}))
"""


def test_the_seed_pages_snippet_reports_the_cost(cpu_venv, tiny_model, tmp_path, kanoa_pricing_file):
    """kanoa built by hand, as the seed page shows, from `kanoa-local env`'s values: the price
    `up` registered in kanoa's user file gives a cost > 0; `down` takes it out again."""
    import shutil

    model = tmp_path / "seed-snippet-model"
    shutil.copytree(tiny_model, model)
    r = run_cli("up", "--model-path", str(model), "--python", str(cpu_venv / "bin" / "python"), "--name", "seed",
                "--port", str(free_port()), "--cost-per-mtok", "0.2", "--json", timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    try:
        prices = json.loads(kanoa_pricing_file.read_text())["openai"]
        assert prices["seed-snippet-model"]["input_price"] == 0.2 == prices["seed-snippet-model"]["output_price"]
        exports = json.loads(run_cli("env", "seed", "--json").stdout)
        clean = {k: v for k, v in cli_env().items() if not k.startswith("OPENAI_")}
        p = subprocess.run([sys.executable, "-c", SNIPPET], env={**clean, **exports}, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        out = json.loads(p.stdout.strip().splitlines()[-1])
        assert out["text"] and out["input"] > 0 and out["cost"] > 0, out
        assert out["stream_usages"] == 1 and out["stream_cost"] > 0, out
    finally:
        d = run_cli("down", "seed")
    assert d.returncode == 0, d.stderr
    assert "seed-snippet-model" not in json.loads(kanoa_pricing_file.read_text()).get("openai", {})
