"""Every knob kanoa-local reads from the environment, and where it keeps its files.

``KANOA_LOCAL_HOME`` moves all of kanoa-local's own state (tests set it to a temp dir).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VARS: dict[str, str] = {
    "KANOA_LOCAL_HOME": "root for kanoa-local's config, state and cache (default: platform dirs)",
    "KANOA_DEBUG": "1 shows tracebacks for errors (same as --debug)",
    "KANOA_LOCAL_MODELS": "where packaged models are unpacked (default: <cache>/models)",
    "KANOA_VLLM_PYTHON": "the interpreter with vLLM for the process runtime (default: this one if it "
                         "has vLLM, else the engine `engine install --cpu` built)",
    "KANOA_LOCAL_ENGINES": "where `engine install` keeps engine venvs and their wheels (default: <cache>/engines)",
    "HF_HOME": "Hugging Face home; weights go to $HF_HOME/hub",
    "HF_HUB_CACHE": "Hugging Face hub cache (where weights go), overrides HF_HOME",
    "HF_TOKEN": "token for gated models; passed to the engine, never printed",
    "DOCKER_HOST": "Docker daemon to use (default: the local socket)",
}


def _home() -> Path | None:
    value = os.environ.get("KANOA_LOCAL_HOME")
    return Path(value).expanduser() if value else None


def _user_dir(kind: str) -> Path:
    """kanoa-local's own dir of ``kind`` (config/state/cache): under $KANOA_LOCAL_HOME when set,
    else where the platform keeps such files (platformdirs)."""
    home = _home()
    if home:
        return home / kind
    import platformdirs

    finder = {"config": platformdirs.user_config_dir, "state": platformdirs.user_state_dir,
              "cache": platformdirs.user_cache_dir}[kind]
    return Path(finder("kanoa-local", appauthor=False))


def config_dir() -> Path:
    return _user_dir("config")


def state_dir() -> Path:
    return _user_dir("state")


def cache_dir() -> Path:
    return _user_dir("cache")


def packaged_models_dir() -> Path:
    """Where weights that ship as a Python package are unpacked into a checkpoint directory."""
    value = os.environ.get("KANOA_LOCAL_MODELS")
    return Path(value).expanduser() if value else cache_dir() / "models"


def engines_dir() -> Path:
    """Where `kanoa-local engine install` keeps engine venvs and the wheels they came from."""
    value = os.environ.get("KANOA_LOCAL_ENGINES")
    return Path(value).expanduser() if value else cache_dir() / "engines"


def hub_offline() -> bool:
    """Whether $HF_HUB_OFFLINE asks for no model hub (the default of every --offline)."""
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "no")


def debug_enabled() -> bool:
    return os.environ.get("KANOA_DEBUG", "") not in ("", "0", "false", "no")
