"""The one exception tree of kanoa-local.

Every error a user can meet is a :class:`KanoaError`: a one-line ``message`` (what happened),
a ``remedy`` (what to do next) and an ``exit_code``. The CLI renders them in one place
(``cli.py``); the library never prints or exits.

Exit codes (also in ``kanoa-local --help`` and the README)::

    0   success (``check``: ready for GPU serving)
    1   KanoaError without a more specific class; internal error
    2   UsageError          bad option, unknown name
    3   ConfigError         a file (profile, models.toml, state) is malformed or wrong
    4   ProbeError          the hardware probe itself failed
    5   NoFitError          nothing fits for a launch
    6   EngineError         where the engine runs: Docker daemon, Slurm or Kubernetes not answering
                        (what runs there is then kept, not forgotten), NVIDIA runtime or image missing
    7   EngineStartError    the engine started but did not become ready
    8   DeploymentNotFound  no deployment of that name
    9   WeightsUnavailable  the weights are not here and cannot be fetched (offline and not
                        downloaded; a gated repo without a token that has access)
    10  ``check``: CPU only (no usable NVIDIA GPU; the CPU engine can serve small models)
    11  ``check``: a GPU is there but not ready to serve (see the failed items)
    12  ``check``: cannot serve here at all
    129 hung up (SIGHUP) during a start; cleaned up as for Ctrl-C
    130 interrupted (Ctrl-C); whatever was started has been cleaned up
    143 terminated (SIGTERM) during a start; cleaned up as for Ctrl-C
"""

from __future__ import annotations

import re

from typing import Any, ClassVar


class KanoaError(Exception):
    """Base for every error shown to a user."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, remedy: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy
        self.details = details or {}

    def __str__(self) -> str:
        return self.message


class UsageError(KanoaError):
    exit_code = 2


class ConfigError(KanoaError):
    exit_code = 3


class ProbeError(KanoaError):
    exit_code = 4


class NoFitError(KanoaError):
    exit_code = 5


class EngineError(KanoaError):
    exit_code = 6


class DockerUnavailable(EngineError):
    pass


class GpuRuntimeMissing(EngineError):
    pass


class ImageUnavailable(EngineError):
    pass


class NameTaken(EngineError):
    """A container name kanoa-local needs is held by something that is not this user's deployment."""


class EngineStartError(KanoaError):
    exit_code = 7


class DeploymentNotFound(KanoaError):
    exit_code = 8


class WeightsUnavailable(KanoaError):
    exit_code = 9


class Interrupted(KanoaError):
    exit_code = 130


#: ``check`` verdict exit codes (not errors: a report is not an error).
CHECK_EXIT_GPU_READY = 0
CHECK_EXIT_CPU_ONLY = 10
CHECK_EXIT_GPU_NOT_READY = 11
CHECK_EXIT_CANNOT_SERVE = 12

_SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "OPENAI_API_KEY")


#: kanoa-local's own API keys (``kl-`` + 32 url-safe characters), and Hugging Face tokens
_KEY_SHAPES = re.compile(r"\b(?:kl-[A-Za-z0-9_-]{40,}|hf_[A-Za-z0-9]{30,})")


def cause_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first: ``__cause__``, else ``__context__``, else a
    ``.reason`` that is itself an exception (urllib keeps the socket or TLS error there)."""
    seen: list[BaseException] = []
    cur: object = exc
    while isinstance(cur, BaseException) and cur not in seen:
        seen.append(cur)
        reason = getattr(cur, "reason", None)
        cur = cur.__cause__ or cur.__context__ or (reason if isinstance(reason, BaseException) else None)
    return seen


def redact(text: str, secrets: list[str] | None = None) -> str:
    """Replace every known secret by ``***``: the HF token and API keys in the environment,
    the given ``secrets``, and anything shaped like a kanoa-local key or an HF token."""
    import os

    values = [os.environ.get(name, "") for name in _SECRET_ENV] + list(secrets or [])
    for value in sorted(values, key=len, reverse=True):
        if value and len(value) >= 6:
            text = text.replace(value, "***")
    return _KEY_SHAPES.sub(lambda m: m.group(0)[:3] + "***", text)


class VisionNotSupported(UsageError, ValueError):
    """A figure for a text-only model: refused before any request is sent."""
