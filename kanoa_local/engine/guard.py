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


def tar_archive(folder: str = CONTAINER_DIR, extra: dict[str, tuple[bytes, int]] | None = None) -> bytes:
    """The module at ``folder``/kanoa_local_guard.py (and ``extra``: absolute path -> content,
    mode) as a tar to unpack at ``/`` of a created container (folders included: the image need
    not have them)."""
    files = {f"{folder.rstrip('/')}/{FILE}": (source().encode(), 0o444), **(extra or {})}
    buf = io.BytesIO()
    dirs: dict[str, None] = {}
    for path in files:
        parts = [p for p in path.strip("/").split("/") if p][:-1]
        for i in range(1, len(parts) + 1):
            dirs["/".join(parts[:i])] = None
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, (data, mode) in files.items():
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
