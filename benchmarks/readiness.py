"""Time to ready: `kanoa-local up` vs doing it by hand, in the same run.

Baseline: a raw `docker run` of the same image and arguments (or the same server command as a
process) plus a poll until one token comes back — what a careful user would script. `up` adds
planning, state, the key file and log following; the goal is a ratio ≤ 1.05. Median of N runs
each, alternating so that caches warm both sides alike. Needs the harness: the local CPU image
and venv (scripts/cpu-runtime.sh) and a tiny model (scripts/tiny_model.py).

    .venv/bin/python benchmarks/readiness.py [--runs 3] [--runtime docker|process|both]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_token(base: str, key: str, model: str) -> bool:
    req = urllib.request.Request(f"{base}/v1/completions", method="POST",
                                 data=json.dumps({"model": model, "prompt": "hi", "max_tokens": 1}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def poll(base: str, key: str, model: str, limit: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if first_token(base, key, model):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise TimeoutError("no token")


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kanoa_local", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def run_up(runtime: str, model: Path, image: str, venv: Path, env: dict) -> float:
    port = free_port()
    args = ["up", "--model-path", str(model), "--name", "bench", "--port", str(port), "--json"]
    args += ["--image", image] if runtime == "docker" else ["--runtime", "process", "--python", str(venv / "bin" / "python")]
    t0 = time.monotonic()
    r = cli(*args, env=env)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-1000:])
    cli("down", "bench", env=env)
    return dt


def raw_argv(model_ref: str, name: str, port: int) -> list[str]:
    return ["--model", model_ref, "--served-model-name", name, "--host", "0.0.0.0" if model_ref == "/model" else "127.0.0.1",
            "--port", str(port), "--max-model-len", "4096", "--dtype", "float32", "--enforce-eager"]


def run_raw(runtime: str, model: Path, image: str, venv: Path) -> float:
    key, port, name = "sk-" + secrets.token_hex(8), free_port(), "tiny"
    if runtime == "docker":
        cname = f"bench-raw-{port}"
        t0 = time.monotonic()
        # the same mounts `up` gives the container (HF cache, vLLM's compile cache, the model)
        sys.path.insert(0, str(ROOT))
        from kanoa_local.hub import engine_caches

        caches = engine_caches()
        subprocess.run(["docker", "run", "-d", "--name", cname, "-p", f"127.0.0.1:{port}:8000", "--shm-size", "2g",
                        "-e", "VLLM_CPU_KVCACHE_SPACE=1", "-e", "HF_HUB_OFFLINE=1", "-e", f"VLLM_API_KEY={key}",
                        "-v", f"{caches['hf_cache']}:/root/.cache/huggingface/hub",
                        "-v", f"{caches['vllm_cache']}:/root/.cache/vllm",
                        "-v", f"{model}:/model:ro", image, *raw_argv("/model", name, 8000)],
                       check=True, capture_output=True)
        try:
            poll(f"http://127.0.0.1:{port}", key, name)
            return time.monotonic() - t0
        finally:
            subprocess.run(["docker", "rm", "-f", cname], capture_output=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_API_KEY": key}
    with tempfile.TemporaryFile() as log:
        t0 = time.monotonic()
        p = subprocess.Popen([str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                              *raw_argv(str(model), name, port)], stdout=log, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        try:
            poll(f"http://127.0.0.1:{port}", key, name)
            return time.monotonic() - t0
        finally:
            os.killpg(p.pid, 15)
            p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--runtime", choices=["docker", "process", "both"], default="both")
    a = ap.parse_args()
    out = subprocess.run(["bash", str(ROOT / "scripts" / "cpu-runtime.sh"), "all"], capture_output=True,
                         text=True, check=True).stdout
    harness = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    venv, image = Path(harness["KANOA_CPU_VENV"]), harness["KANOA_CPU_IMAGE"]
    model = Path(subprocess.run([str(venv / "bin" / "python"), str(ROOT / "scripts" / "tiny_model.py")],
                                capture_output=True, text=True, check=True).stdout.split()[-1])
    home = tempfile.mkdtemp(prefix="kanoa-bench-")
    env = {**os.environ, "KANOA_LOCAL_HOME": home}
    runtimes = ["docker", "process"] if a.runtime == "both" else [a.runtime]
    print(f"tiny model {model.name}, image {image}, {a.runs} runs each, alternating")
    print(f"{'runtime':<9} {'raw + poll (s)':>15} {'kanoa-local up (s)':>19} {'ratio':>7}")
    for rt in runtimes:
        raw, ours = [], []
        for _ in range(a.runs):
            raw.append(run_raw(rt, model, image, venv))
            ours.append(run_up(rt, model, image, venv, env))
        r, o = statistics.median(raw), statistics.median(ours)
        print(f"{rt:<9} {r:>15.1f} {o:>19.1f} {o / r:>7.3f}   raw {shlex.join(f'{x:.1f}' for x in raw)}; "
              f"up {shlex.join(f'{x:.1f}' for x in ours)}")


if __name__ == "__main__":
    main()
