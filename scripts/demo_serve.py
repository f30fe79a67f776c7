"""Serve a model dir with the vLLM CPU image, ask one question through the openai client,
print the answer and the token counts, and remove the container (also on error or Ctrl-C)."""

from __future__ import annotations

import argparse
import secrets
import socket
import sys
import time
import urllib.request

import docker
from openai import OpenAI


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "sk-" + secrets.token_hex(16)
    client = docker.from_env()
    ctr = client.containers.run(
        a.image, detach=True, labels={"io.kanoa-local.role": "demo"},
        command=["--model", "/model", "--served-model-name", "tiny", "--host", "0.0.0.0",
                 "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
                 "--api-key", key],
        environment={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
        volumes={a.model: {"bind": "/model", "mode": "ro"}},
        ports={"8000/tcp": ("127.0.0.1", port)}, shm_size="1g")
    try:
        oa = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        t0 = time.monotonic()
        while True:
            ctr.reload()
            if ctr.status not in ("created", "running"):
                print(ctr.logs(tail=20).decode(errors="replace"), file=sys.stderr)
                return 1
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
            if time.monotonic() - t0 > 300:
                print("engine not ready after 300 s", file=sys.stderr)
                return 1
        print(f"engine ready in {time.monotonic() - t0:.0f} s on 127.0.0.1:{port}")
        r = oa.chat.completions.create(model="tiny", max_tokens=16, messages=[
            {"role": "user", "content": "Explain the sales trend by region."}])
        print("answer (random weights, so random words):", repr(r.choices[0].message.content))
        print(f"usage: {r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens")
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        ctr.remove(force=True)
        print("container removed")


if __name__ == "__main__":
    sys.exit(main())
