"""The key guard that closes every route of a vLLM server but health (see
``kanoa_local/data/engine/kanoa_local_guard.py``, the module the engine imports), and how each
place the engine runs gets it onto the engine's Python path."""

from __future__ import annotations

import io
import tarfile
from importlib import resources
from pathlib import Path

MODULE = "kanoa_local_guard"
#: vLLM's import path for it: ``--middleware kanoa_local_guard.KeyGuard``
MIDDLEWARE = f"{MODULE}.KeyGuard"
FILE = f"{MODULE}.py"
#: where it lives inside a container or pod (on PYTHONPATH there)
CONTAINER_DIR = "/opt/kanoa-local"
OPEN_PATHS = ("/health",)


def args() -> list[str]:
    return ["--middleware", MIDDLEWARE]


def local_dir() -> Path:
    """The installed package's folder holding the module (and nothing else importable)."""
    return Path(str(resources.files("kanoa_local") / "data" / "engine"))


def source() -> str:
    return (local_dir() / FILE).read_text()


def pythonpath(first: str, existing: str | None) -> str:
    """``first`` ahead of an existing PYTHONPATH, kept."""
    return first + (":" + existing if existing else "")


def shell_writer(folder: str) -> str:
    """Shell lines that write the module into ``folder`` (a shell word, may hold ``$VARS``)."""
    return (f'mkdir -p {folder}\ncat > {folder}/{FILE} <<\'KANOA_LOCAL_GUARD_EOF\'\n'
            + source() + "KANOA_LOCAL_GUARD_EOF\n")


def tar_archive(folder: str = CONTAINER_DIR) -> bytes:
    """The module at ``folder``/kanoa_local_guard.py as a tar to unpack at ``/`` of a created
    container (folders included: the image need not have them)."""
    data = source().encode()
    buf = io.BytesIO()
    parts = [p for p in folder.strip("/").split("/") if p]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(1, len(parts) + 1):
            d = tarfile.TarInfo("/".join(parts[:i]))
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(d)
        info = tarfile.TarInfo("/".join([*parts, FILE]))
        info.size, info.mode = len(data), 0o444
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
