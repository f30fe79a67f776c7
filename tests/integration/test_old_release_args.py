"""The command a plan prints on an older image is one that release accepts. The CPU engine's
venv parses the plans of its own release and newer (test_plan_argv.py); for the older images
(v0.19.1, v0.10.2, v0.8.5, v0.6.6.post1) the argument list is read from that release's own
published wheel: `pip download` through the configured package index, then the argparse calls
of its `vllm/engine/arg_utils.py` and `vllm/entrypoints/openai/cli_args.py` read with `ast`
(flags, `--no-` forms of boolean ones, the dataclass-generated frontend flags, and which flags
parse KEY=VALUE rather than JSON). What was read is cached by version outside the checkout, so
the wheels (hundreds of MB) are fetched once per machine."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from kanoa_local.catalog import version_tuple
from kanoa_local.images import GPU_IMAGES
from kanoa_local.runtimes.engine_venv import CPU_VERSION
from tests.conftest import DEV_CACHE
from tests.integration.plan_argvs import plan_argvs

pytestmark = pytest.mark.engine

SOURCES = ("vllm/engine/arg_utils.py", "vllm/entrypoints/openai/cli_args.py")
#: pip's names of the older images' releases (the tag without its "v")
OLD = sorted({i.tag.lstrip("v").split("-")[0] for i in GPU_IMAGES if version_tuple(i.vllm) < version_tuple(CPU_VERSION)},
             key=version_tuple)
READER = 1        # bump when what is read from the sources changes: the cache key


def read_arguments(sources: list[str]) -> dict[str, list[str]]:
    """What a release's argparse accepts, from its source text."""
    flags: set[str] = set()
    key_value: set[str] = set()
    for text in sources:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                         and a.value.startswith("--")]
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords if k.arg}
                for n in names:
                    flags.add(n)
                    if "BooleanOptionalAction" in kw.get("action", ""):
                        flags.add("--no-" + n[2:])
                    if "nullable_kvs" in kw.get("type", ""):
                        key_value.add(n)
            if isinstance(node, ast.ClassDef) and node.name.endswith("FrontendArgs"):
                for st in node.body:       # flags made from the dataclass's fields (0.10 on)
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                        flags.add("--" + st.target.id.replace("_", "-"))
                        if st.annotation is not None and ast.unparse(st.annotation) == "bool":
                            flags.add("--no-" + st.target.id.replace("_", "-"))
    return {"flags": sorted(flags), "key_value": sorted(key_value)}


def release_arguments(version: str) -> dict[str, list[str]]:
    cache = DEV_CACHE / "vllm-args" / f"{version}-r{READER}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                            "-d", tmp, f"vllm=={version}"], capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, f"pip download vllm=={version}: {r.stderr[-1500:]}"
        wheel = next(Path(tmp).glob("vllm-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            texts = [z.read(name).decode() for name in SOURCES]
    got = read_arguments(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(got))
    return got


def plans_of(release: str) -> list[tuple[str, list[str]]]:
    """The argv of every fitting GPU plan on ``release``'s image: each model on each profile,
    asked for that release."""
    return plan_argvs(lambda c: c.settings.image is not None and c.settings.image.endswith(":v" + release),
                      vllm_version=release.split(".post")[0])


def test_the_reader_finds_the_flags_of_each_style():
    """The three ways vLLM has declared flags, as the releases write them."""
    old = "p.add_argument('--limit-mm-per-prompt', type=nullable_kvs)\np.add_argument('--enforce-eager', action='store_true')"
    mid = "g.add_argument('--max-model-len', **kw['max_model_len'])\ng.add_argument('--x', action=argparse.BooleanOptionalAction)"
    new = "class FrontendArgs:\n    host: str | None = None\n    enable_ssl_refresh: bool = False\n"
    got = read_arguments([old, mid, new])
    assert got["key_value"] == ["--limit-mm-per-prompt"]
    assert {"--enforce-eager", "--max-model-len", "--x", "--no-x", "--host", "--enable-ssl-refresh",
            "--no-enable-ssl-refresh"} <= set(got["flags"])


@pytest.mark.parametrize("release", OLD)
def test_every_plan_on_an_older_image_uses_only_that_releases_flags(release):
    args = release_arguments(release)
    known = set(args["flags"])
    assert {"--model", "--max-model-len", "--gpu-memory-utilization", "--port", "--host"} <= known, release
    plans = plans_of(release)
    assert plans, f"no plan of the matrix runs on v{release}"
    bad = []
    for label, argv in plans:
        for i, a in enumerate(argv):
            if not a.startswith("--"):
                continue
            flag = a.split("=", 1)[0]
            if flag not in known:
                bad.append(f"{label}: {flag}")
            elif flag in args["key_value"] and not re.fullmatch(r"\w+=\d+(,\w+=\d+)*", argv[i + 1]):
                bad.append(f"{label}: {flag} {argv[i + 1]} (this release parses KEY=VALUE)")
    assert not bad, f"v{release}: " + "; ".join(sorted(set(bad))[:12])
    assert "--no-such-flag" not in known
