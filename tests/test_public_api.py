"""Import discipline: a fast CLI start, and each foreign library imported in one module."""

from __future__ import annotations

import re
import subprocess

import pytest
import sys
from pathlib import Path

import kanoa_local

PKG = Path(kanoa_local.__file__).parent


def test_all_is_sorted_and_resolves():
    assert kanoa_local.__all__ == sorted(kanoa_local.__all__)
    for name in kanoa_local.__all__:
        assert getattr(kanoa_local, name) is not None


def test_cli_import_pulls_no_heavy_module():
    code = ("import sys, kanoa_local.cli; heavy = [m for m in ('docker', 'openai', 'pynvml', "
            "'rich', 'pydantic', 'psutil', 'kanoa', 'huggingface_hub') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_each_foreign_library_is_imported_in_one_module():
    owners = {"pynvml": {"probe/nvml.py"}, "docker": {"backends/docker_api.py"},
              "kubernetes": {"backends/kube_api.py"}, "psutil": {"probe/system.py", "runtimes/process.py"},
              "huggingface_hub": {"hub.py"}, "openai": {"client.py"}}
    for lib, allowed in owners.items():
        found = set()
        for f in PKG.rglob("*.py"):
            if re.search(rf"^\s*(import {lib}\b|from {lib}\b)", f.read_text(), re.M):
                found.add(str(f.relative_to(PKG)))
        assert found == allowed, (lib, found)


def test_the_planner_is_pure():
    """plan/ never imports the probe or the engine: planning a GPU you don't have must work."""
    code = ("import sys, kanoa_local.plan, kanoa_local.plan.matrix; "
            "print([m for m in sys.modules if m.startswith(('kanoa_local.probe', 'kanoa_local.engine', "
            "'docker', 'pynvml', 'huggingface_hub'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


#: (importer, what it must never load): the layering of the package
FORBIDDEN = [
    ("kanoa_local.state", ("kanoa_local.client", "kanoa_local.interpreter", "kanoa_local.deploy",
                           "kanoa_local.runtimes", "kanoa_local.cli")),
    ("kanoa_local.engine.spec", ("kanoa_local.check", "kanoa_local.runtimes", "kanoa_local.deploy",
                                 "kanoa_local.backends", "kanoa_local.probe")),
    ("kanoa_local.engine.ready", ("kanoa_local.check", "kanoa_local.runtimes", "kanoa_local.deploy")),
    ("kanoa_local.engine.diagnose", ("kanoa_local.check", "kanoa_local.runtimes", "kanoa_local.deploy")),
    ("kanoa_local.probe", ("kanoa_local.engine", "kanoa_local.runtimes", "kanoa_local.deploy")),
    ("kanoa_local.runtimes", ("kanoa_local.deploy", "kanoa_local.cli", "kanoa_local.render")),
    ("kanoa_local.backends.docker_api", ("kanoa_local.runtimes", "kanoa_local.deploy", "kanoa_local.cli")),
    ("kanoa_local.deploy", ("kanoa_local.cli", "kanoa_local.render")),
]


@pytest.mark.parametrize("module,forbidden", FORBIDDEN, ids=[m for m, _ in FORBIDDEN])
def test_import_directions(module, forbidden):
    """Lower layers never load higher ones: cli → deploy → runtimes → backends; state imports
    no hand-off code; engine/ is vLLM knowledge and imports neither check nor the runtimes."""
    import importlib

    mods = [module] + ([f"{module}.{m}" for m in ("process", "docker", "slurm", "k8s")]
                       if module == "kanoa_local.runtimes" else [])
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {mods!r}]; "
            f"print(sorted({{m for m in sys.modules if m.startswith({forbidden!r})}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", (module, out.stdout)
    importlib.import_module(module)


def test_no_module_is_over_400_lines():
    big = {str(f.relative_to(PKG)): n for f in PKG.rglob("*.py")
           if (n := len(f.read_text().splitlines())) > 400}
    assert big == {}, big
