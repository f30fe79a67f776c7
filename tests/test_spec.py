"""Plan → launch spec: the exact vLLM arguments, secure defaults, labels (pure, no Docker)."""

from __future__ import annotations

from kanoa_local.catalog import load_catalog
from kanoa_local.engine.spec import LABEL_PREFIX, launch_spec
from kanoa_local.plan import PlanRequest, plan
from kanoa_local.probe import load_preset

CATALOG = load_catalog(user=False)


def chosen(profile: str, **req):
    c = plan(load_preset(profile), CATALOG, PlanRequest(**req)).chosen
    assert c is not None
    return c


def test_gpu_spec_has_the_planned_flags_and_no_secrets():
    c = chosen("2x-rtx4090", model="llama-3.1-70b")
    spec = launch_spec(c, deployment="lab", port=8001)
    a = spec.argv
    assert a[a.index("--model") + 1] == c.variant.repo
    assert a[a.index("--tensor-parallel-size") + 1] == "2"
    assert a[a.index("--max-model-len") + 1] == str(c.settings.max_model_len)
    assert a[a.index("--gpu-memory-utilization") + 1] == f"{c.settings.gpu_memory_utilization:.2f}"
    assert "--api-key" not in a and "VLLM_API_KEY" in spec.secret_env and "HF_TOKEN" in spec.secret_env
    assert spec.host == "127.0.0.1" and spec.port == 8001 and spec.gpus == [0, 1] and spec.ipc_host
    assert spec.labels[LABEL_PREFIX + "deployment"] == "lab"
    cmd = spec.docker_command()
    assert "-p 127.0.0.1:8001:8000" in cmd and '--gpus "device=0,1"' in cmd
    assert "-e VLLM_API_KEY " in cmd and "sk-" not in cmd


def test_vision_model_gets_image_limit_and_remote_code():
    c = chosen("rtx5080-egpu", model="molmo-7b-d", trust_remote_code=True)
    a = launch_spec(c).argv
    assert "--trust-remote-code" in a
    # videos named: a modality vLLM is not told about gets 999 (and a dummy video in profiling)
    assert a[a.index("--limit-mm-per-prompt") + 1] == '{"image":1,"video":0}'
    assert a[a.index("--quantization") + 1] == "bitsandbytes"


def test_cpu_spec_mounts_local_weights_offline_and_sizes_the_kv_cache():
    c = chosen("no-driver", offline=True)
    spec = launch_spec(c, model_dir="/srv/gemma", cpu_image="kanoa-local/vllm-cpu:test")
    assert spec.image == "kanoa-local/vllm-cpu:test" and spec.gpus is None and spec.shm_size
    assert spec.argv[spec.argv.index("--model") + 1] == "/model"
    assert any(m.source == "/srv/gemma" and m.read_only for m in spec.mounts)
    assert spec.env["HF_HUB_OFFLINE"] == "1"
    assert spec.env["VLLM_CPU_KVCACHE_SPACE"] == str(c.settings.cpu_kv_cache_gib)
    assert "--dtype" in spec.argv and "float32" in spec.argv and "--enforce-eager" in spec.argv
    proc = launch_spec(c, runtime="process", model_dir="/srv/gemma", port=9000)
    assert proc.image is None and proc.argv[proc.argv.index("--host") + 1] == "127.0.0.1"
    assert "--port 9000" in proc.process_command()


def test_node_launches_give_each_node_its_rank_address_and_a_headless_worker():
    from kanoa_local.engine.spec import WORKER_ENTRYPOINT, node_launches

    c = chosen("no-driver", offline=True)
    spec = launch_spec(c, deployment="span_x", model_dir="/srv/m", port=8123, host="127.0.0.1")
    (head, h), (worker, w) = node_launches(spec, deployment="span_x", listen="127.0.0.1", master_port=29624,
                                           nodes=[(None, "10.0.0.1"), ("tcp://10.0.0.2:2375", "10.0.0.2")])
    for s, n, rank in ((head, h, 0), (worker, w, 1)):
        a = s.argv
        assert a[a.index("--node-rank") + 1] == str(rank) and a[a.index("--nnodes") + 1] == "2"
        assert a[a.index("--master-addr") + 1] == "10.0.0.1" and a[a.index("--master-port") + 1] == "29624"
        assert a[a.index("--port") + 1] == "8123"           # host networking: the real port
        assert s.env["VLLM_HOST_IP"] == n.address and s.labels[LABEL_PREFIX + "node-rank"] == str(rank)
        assert n.hostname == f"kanoa-span-x-{rank}"          # a valid hostname from any name
    assert "--headless" not in head.argv and h.entrypoint is None and h.docker_host is None
    assert worker.argv[-1] == "--headless" and w.entrypoint == WORKER_ENTRYPOINT
    assert head.argv[head.argv.index("--host") + 1] == "127.0.0.1"
