"""The hand-off: clients for a running deployment. The only module that imports ``openai``.

``env_exports`` gives the variables other tools read (the OpenAI SDKs and most OpenAI-compatible
clients honour OPENAI_BASE_URL / OPENAI_API_KEY).
"""

from __future__ import annotations

from typing import Any

from .state import Deployment, read_api_key


def env_exports(dep: Deployment) -> dict[str, str]:
    out = {"OPENAI_BASE_URL": dep.base_url, "OPENAI_API_KEY": read_api_key(dep),
           "KANOA_LOCAL_MODEL": dep.served_model_name}
    if dep.spec.tls is not None:
        # the certificate to trust (its own file; a tool decides whether to add it to its CAs)
        out["KANOA_LOCAL_CA_FILE"] = dep.spec.tls.certfile
    return out


def openai_client(dep: Deployment, *, async_: bool = False, **kwargs: Any) -> Any:
    """An ``openai.OpenAI`` (or ``AsyncOpenAI``) client for the deployment."""
    try:
        import openai
    except ImportError as exc:  # pragma: no cover - a declared dependency
        from .errors import ConfigError

        raise ConfigError("the openai package is missing", remedy="pip install openai") from exc
    cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    if dep.spec.tls is not None and "http_client" not in kwargs:
        # HTTPS: trust the system's CAs and the deployment's own certificate (a self-signed one)
        from .engine.tls import client_context

        ctx = client_context(dep.spec.tls)
        assert ctx is not None
        kwargs["http_client"] = (openai.DefaultAsyncHttpxClient if async_ else openai.DefaultHttpxClient)(verify=ctx)
    return cls(base_url=dep.base_url, api_key=read_api_key(dep), **kwargs)
