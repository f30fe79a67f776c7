#!/usr/bin/env bash
# Qwen2.5-VL 7B on one machine
# Rendered by kanoa-local from its plan; run each block on its node. The API key comes from
# the environment (never written here): export VLLM_API_KEY=... (`kanoa-local env` shows one).
set -euo pipefail
: "${VLLM_API_KEY:?set VLLM_API_KEY first}"
HF_CACHE="${HF_HOME:-$HOME/.cache/huggingface}"
# kanoa-local's key guard (vLLM --middleware): every route but /health needs the key. The
# container mounts it from this folder, on the machine whose Docker daemon runs it.
KANOA_GUARD_DIR="${KANOA_GUARD_DIR:-$HOME/.cache/kanoa-local/guard}"
mkdir -p "$KANOA_GUARD_DIR"
cat > "$KANOA_GUARD_DIR"/kanoa_local_guard.py <<'KANOA_LOCAL_GUARD_EOF'
"""kanoa-local's key guard for vLLM's OpenAI server: every request needs the deployment's key,
except the health check.

vLLM's own ``--api-key`` check covers only paths under /v1, /v2, /inference and /cohere; the same
server also answers /invocations (inference), /tokenize, /metrics, /version, /load and more to
anyone who reaches the port. This module closes them. kanoa-local ships it into the engine's
environment (on the Python path of the process, copied into the container, written by the
Slurm job, mounted from a ConfigMap in the pod) and starts vLLM with
``--middleware kanoa_local_guard.KeyGuard``.

It is a plain ASGI middleware with no imports beyond the standard library, so it loads in any
vLLM image. The key comes from the ``VLLM_API_KEY`` environment variable (never from argv);
without one, everything but health is refused (closed, not open, when misconfigured).
A request is let through when it carries ``Authorization: Bearer <key>``.
"""

import hashlib
import hmac
import json
import os

#: Paths that answer without the key: what load balancers and kubelets probe. Exact matches only.
OPEN_PATHS = frozenset({"/health"})

_BODY = json.dumps({"error": "Unauthorized", "detail": "this server needs its API key "
                    "(Authorization: Bearer ...); `kanoa-local env NAME` shows it"}).encode()


def _digest(value):
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def _keys():
    # one key, exactly as vLLM reads the variable (no splitting, no stripping)
    raw = os.environ.get("VLLM_API_KEY", "")
    return [_digest(raw)] if raw else []


class KeyGuard:
    """``app.add_middleware(KeyGuard)``: the outermost layer, so it runs before any route."""

    def __init__(self, app, keys=None):
        self.app = app
        self._keys = [_digest(k) for k in keys] if keys is not None else _keys()

    def allowed(self, scope):
        path = scope.get("path", "")
        root = scope.get("root_path", "") or ""
        if root and path.startswith(root):
            path = path[len(root):]
        if path in OPEN_PATHS and scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            return True
        given = None
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                given = value.decode("latin-1")
                break
        if not given:
            return False
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = _digest(token)
        ok = False
        for key in self._keys:          # no early exit: the time taken says nothing about the key
            ok |= hmac.compare_digest(digest, key)
        return ok

    async def __call__(self, scope, receive, send):
        kind = scope.get("type")
        if kind not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            # closing before accepting makes the server answer the handshake with 403
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b'Bearer realm="kanoa-local"'),
                                (b"content-length", str(len(_BODY)).encode())]})
        await send({"type": "http.response.body", "body": _BODY})
KANOA_LOCAL_GUARD_EOF

# --- node 0 (node0)
docker run -d --name kanoa-qwen2.5-vl-7b --restart no --gpus "device=0" --ipc=host -p 127.0.0.1:8000:8000 -v "$HF_CACHE:/root/.cache/huggingface" -v "$KANOA_GUARD_DIR:/opt/kanoa-local:ro" -e PYTHONPATH=/opt/kanoa-local -e VLLM_API_KEY -e HF_TOKEN --label io.kanoa-local.deployment=qwen2.5-vl-7b --label io.kanoa-local.model=qwen2.5-vl-7b --label io.kanoa-local.node-rank=0 vllm/vllm-openai:v0.33.0 \
  --model RedHatAI/Qwen2.5-VL-7B-Instruct-FP8-Dynamic --served-model-name qwen2.5-vl-7b --host 0.0.0.0 --port 8000 --max-model-len 16128 --gpu-memory-utilization 0.92 --limit-mm-per-prompt '{"image":1,"video":0}' --middleware kanoa_local_guard.KeyGuard
