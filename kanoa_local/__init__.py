"""kanoa-local: run a local LLM for the kanoa analytics interpreter.

Probe the machine, pick a model that fits, serve it with vLLM, hand over a configured client.
The public API is imported lazily so that ``import kanoa_local`` (and the CLI) stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Catalog", "Deployment", "HardwareProfile", "KanoaError", "PlanRequest", "PlanResult",
           "__version__", "check", "connect", "down", "load_catalog", "load_profile", "plan", "probe", "ps",
           "status", "up"]

_LAZY = {
    "Deployment": ("kanoa_local.state", "Deployment"),
    "connect": ("kanoa_local.deploy", "connect"),
    "down": ("kanoa_local.deploy", "down"),
    "ps": ("kanoa_local.deploy", "ps"),
    "status": ("kanoa_local.deploy", "status"),
    "Catalog": ("kanoa_local.catalog", "Catalog"),
    "load_catalog": ("kanoa_local.catalog", "load_catalog"),
    "PlanRequest": ("kanoa_local.plan", "PlanRequest"),
    "PlanResult": ("kanoa_local.plan", "PlanResult"),
    "plan": ("kanoa_local.plan", "plan"),
    "HardwareProfile": ("kanoa_local.hardware", "HardwareProfile"),
    "KanoaError": ("kanoa_local.errors", "KanoaError"),
    "check": ("kanoa_local.check", "check"),
    "load_profile": ("kanoa_local.probe", "load_profile"),
    "probe": ("kanoa_local.probe", "probe"),
}


def up(model: str | None = None, **options: Any) -> Any:
    """Plan and start a deployment (as `kanoa-local up`, option for option); its Deployment.
    Options are `kanoa-local up`'s: model_path, name, port, host, runtime, target, image,
    python, precision, max_model_len, cpu, offline, timeout, replace, docker_host,
    docker_hosts, namespace, ... (see :func:`kanoa_local.deploy.start`)."""
    from .deploy import start

    return start(model, **options).deployment


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kanoa_local' has no attribute {name!r}")
