"""Every command a plan prints is one vLLM accepts: the argv of every fitting plan of the matrix
on every GPU profile (recorded, constructed and named ones), parsed by the engine's own parser
(`make_arg_parser` + `EngineArgs.from_cli_args`) from the CPU engine's venv — for the plans
whose image is that release or newer. Plans on older images are checked against those
releases' own wheels in test_old_release_args.py."""

from __future__ import annotations

import json
import subprocess

import pytest

from kanoa_local.catalog import version_tuple
from tests.integration.plan_argvs import plan_argvs

pytestmark = pytest.mark.engine

PARSE = r'''
import contextlib, importlib, io, json, sys
for name in ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.openai.cli_args"):
    try:
        cli_args = importlib.import_module(name)
        break
    except ImportError:
        pass
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
from vllm.engine.arg_utils import EngineArgs
import vllm
bad = []
for label, argv in json.load(sys.stdin):
    parser = cli_args.make_arg_parser(FlexibleArgumentParser())
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            EngineArgs.from_cli_args(parser.parse_args(argv))
    except SystemExit:
        bad.append([label, err.getvalue().strip().splitlines()[-1:]])
    except Exception as exc:
        bad.append([label, [f"{type(exc).__name__}: {exc}"]])
print(json.dumps({"vllm": vllm.__version__, "bad": bad}))
'''


def plans_on(release: str) -> list[tuple[str, list[str]]]:
    """The argv of every fitting GPU plan whose image is ``release`` or newer."""
    return plan_argvs(lambda c: bool(c.settings.vllm_version)
                      and version_tuple(c.settings.vllm_version) >= version_tuple(release))


def test_every_plan_parses_with_the_engines_own_parser(cpu_venv):
    release = json.loads((cpu_venv / "kanoa-local-engine.json").read_text())["version"]
    argvs = plans_on(release)
    assert len(argvs) >= 50, len(argvs)
    canary = ("canary", ["--model", "m", "--max-model-len", "4096", "--no-such-flag"])   # the check bites
    r = subprocess.run([str(cpu_venv / "bin" / "python"), "-c", PARSE], input=json.dumps(argvs + [canary]),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [b[0] for b in out["bad"]] == ["canary"], out["bad"][:10]
    assert "--no-such-flag" in out["bad"][0][1][0]
