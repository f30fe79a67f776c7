"""Rendering one plan for other engines: golden artefacts, the rules the real engines enforce
(checked by kanoa-local first), offline schema validation, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kanoa_local.catalog import load_catalog
from kanoa_local.cluster import Cluster
from kanoa_local.errors import UsageError
from kanoa_local.export import ExportOptions, Layout, check_layout, render
from kanoa_local.export.k8s import check_objects
from kanoa_local.plan import PlanRequest, plan
from tests.conftest import run_cli

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KANOA_UPDATE_GOLDEN") == "1"

CASES = {
    # name: (model, precision, cluster)
    "l4-qwen2.5-vl-7b": ("qwen2.5-vl-7b", None, Cluster(gpu="l4")),
    "2x8-h100-llama-3.1-405b": ("llama-3.1-405b", "bf16", Cluster(nodes=2, gpus_per_node=8, gpu="h100")),
    "2x-rtx4090-llama-3.1-8b": ("llama-3.1-8b", "bf16", Cluster(gpus_per_node=2, gpu="rtx4090")),
}
EXT = {"docker": "sh", "slurm": "sbatch", "k8s": "yaml", "compose": "yaml", "helm": "yaml"}


def chosen(model: str, precision: str | None, cluster: Cluster):
    r = plan(cluster.profile(), load_catalog(user=False),
             PlanRequest(model=model, precision=precision, nodes=cluster.nodes, hf_token=True))
    assert r.chosen is not None, r.summary
    return r.chosen


def artefacts(case: str, target: str):
    model, precision, cluster = CASES[case]
    c = chosen(model, precision, cluster)
    return c, render(target, c, ExportOptions(name=model), nodes=cluster.nodes)


@pytest.mark.parametrize("target", ["docker", "slurm", "k8s", "compose", "helm"])
@pytest.mark.parametrize("case", list(CASES))
def test_golden(case, target):
    model, _, cluster = CASES[case]
    if target in ("compose", "helm") and cluster.nodes > 1:
        with pytest.raises(UsageError, match="one machine|one node"):
            artefacts(case, target)
        return
    _, files = artefacts(case, target)
    assert len(files) == (2 if target == "compose" else 1)
    if target == "compose":        # the guard module beside the compose file
        from kanoa_local.engine import guard

        assert files[1].name == guard.FILE and files[1].content == guard.source()
    golden = GOLDEN / f"{target}-{case}.{EXT[target]}"
    if UPDATE:
        golden.write_text(files[0].content)
    assert golden.exists(), f"no golden file {golden}: render it with KANOA_UPDATE_GOLDEN=1 and review it"
    assert files[0].content == golden.read_text(), f"re-render with KANOA_UPDATE_GOLDEN=1 if intended: {golden}"


def test_multi_node_plans_follow_vllms_rule():
    c = chosen("llama-3.1-405b", "bf16", CASES["2x8-h100-llama-3.1-405b"][2])
    s = c.settings
    assert (s.tensor_parallel_size, s.pipeline_parallel_size) == (8, 2)      # TP = GPUs per node, PP = nodes
    assert "2 nodes × 8 ×" in c.gpu_name
    _, [docker] = artefacts("2x8-h100-llama-3.1-405b", "docker")
    text = docker.content
    assert text.count("docker run") == 2 and text.count("--headless") == 1
    assert "--node-rank 0" in text and "--node-rank 1" in text and '--master-addr "$HEAD_ADDR"' in text
    assert "--host 127.0.0.1" in text            # host networking: the API stays on loopback
    # too big for one node of 8: the plan says how many nodes it needs
    one = plan(Cluster(gpus_per_node=8, gpu="a100-80g").profile(), load_catalog(user=False),
               PlanRequest(model="llama-3.1-405b", precision="bf16"))
    bf16 = next(c for c in one.candidates if c.variant.precision == "bf16")
    assert bf16.fits == "no" and "2 nodes × 8 × 80 GB" in (bf16.needs or ""), bf16.needs


def test_rendered_scripts_are_valid_shell():
    for case in CASES:
        for target in ("docker", "slurm"):
            _, [f] = artefacts(case, target)
            r = subprocess.run(["bash", "-n"], input=f.content, text=True, capture_output=True)
            assert r.returncode == 0, (case, target, r.stderr)


def test_slurm_script_asks_for_whole_nodes_and_gpus():
    _, [f] = artefacts("2x8-h100-llama-3.1-405b", "slurm")
    assert "#SBATCH --nodes=2" in f.content and "#SBATCH --gres=gpu:8" in f.content
    assert "--ntasks-per-node=1" in f.content and "VLLM_API_KEY:?" in f.content
    assert "kl-golden-key" not in f.content          # no secret in the script


def _validate(objs: list[dict], tmp_path: Path) -> None:
    """kubernetes-validate --strict, offline; LeaderWorkerSet's pod templates as PodTemplates
    (the tool has no schema for the CRD itself)."""
    exe = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    docs = []
    for o in objs:
        if o["kind"] == "LeaderWorkerSet":
            for role, tpl in (("leader", "leaderTemplate"), ("worker", "workerTemplate")):
                docs.append({"apiVersion": "v1", "kind": "PodTemplate",
                             "metadata": {"name": f"{o['metadata']['name']}-{role}"},
                             "template": o["spec"]["leaderWorkerTemplate"][tpl]})
        else:
            docs.append(o)
    path = tmp_path / "objs.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    r = subprocess.run([exe, "--strict", "-k", "1.30.0", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_manifests_pass_kubernetes_validate_strict(case, tmp_path):
    _, [f] = artefacts(case, "k8s")
    objs = list(yaml.safe_load_all(f.content))
    kinds = [o["kind"] for o in objs]
    # the key is referenced, never rendered: no Secret object in an exported file
    assert "Secret" not in kinds and kinds[0] == "ConfigMap" and kinds[-1] == "Service"
    svc = objs[-1]
    assert svc["spec"]["type"] == "ClusterIP" and "." not in svc["metadata"]["name"]
    _validate(objs, tmp_path)


def test_kanoa_local_catches_what_the_api_server_would_refuse():
    _, [f] = artefacts("l4-qwen2.5-vl-7b", "k8s")
    objs = list(yaml.safe_load_all(f.content))
    dep = next(o for o in objs if o["kind"] == "Deployment")
    res = dep["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    res["requests"]["nvidia.com/gpu"] = "2"
    with pytest.raises(UsageError, match="request 2 and limit 1 differ"):
        check_objects(objs)
    res["requests"]["nvidia.com/gpu"] = res["limits"]["nvidia.com/gpu"] = "0.5"
    with pytest.raises(UsageError, match="not a whole number"):
        check_objects(objs)
    res["requests"]["nvidia.com/gpu"] = res["limits"]["nvidia.com/gpu"] = "1"
    objs[-1]["spec"]["type"] = "NodePort"
    with pytest.raises(UsageError, match="outside the cluster"):
        check_objects(objs)


def test_layout_rules():
    with pytest.raises(UsageError, match="more than the 4 GPUs"):
        check_layout(Layout(nodes=1, gpus_per_node=4, tensor_parallel=8), None)
    with pytest.raises(UsageError, match="needs 3 nodes"):
        check_layout(Layout(nodes=2, gpus_per_node=8, tensor_parallel=8, pipeline_parallel=3), None)
    with pytest.raises(UsageError, match="every GPU"):
        check_layout(Layout(nodes=2, gpus_per_node=8, tensor_parallel=4, pipeline_parallel=2), None)
    for bad in ("vllm/vllm-openai", "vllm/vllm-openai:latest", "localhost:5000/vllm"):
        with pytest.raises(UsageError, match="not pinned"):
            check_layout(Layout(), bad)
    check_layout(Layout(), "vllm/vllm-openai:v0.33.0")
    check_layout(Layout(), "registry.example:5000/vllm@sha256:" + "a" * 64)


def test_export_cli(tmp_path):
    r = run_cli("export", "k8s", "qwen2.5-vl-7b", "--gpu", "l4", "--json", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["target"] == "k8s" and res["nodes"] == 1 and len(res["written"]) == 1
    written = Path(res["written"][0])
    assert "stringData" not in written.read_text() and "kl-" not in r.stdout     # no key in the file or JSON
    r = run_cli("export", "slurm", "llama-3.1-405b", "--quant", "bf16", "--nodes", "2",
                "--gpus-per-node", "8", "--gpu", "h100")
    assert r.returncode == 0 and "#SBATCH --nodes=2" in r.stdout, r.stderr
    # one-line errors: nothing fits, a packaged model, a bad cluster file, compose across nodes
    r = run_cli("export", "docker", "llama-3.1-405b", "--quant", "bf16", "--gpu", "t4")
    assert r.returncode == 5 and "Traceback" not in r.stderr
    r = run_cli("export", "docker", "gemma-3-270m", "--gpu", "l4")
    assert r.returncode == 2 and "local files" in r.stderr
    bad = tmp_path / "cluster.toml"
    bad.write_text("[cluster]\nnodes = 0\ngpu = 'h100'\n")
    r = run_cli("export", "docker", "--cluster", str(bad))
    assert r.returncode == 3 and "cluster.nodes" in r.stderr
    r = run_cli("export", "compose", "llama-3.1-405b", "--quant", "bf16", "--nodes", "2",
                "--gpus-per-node", "8", "--gpu", "h100")
    assert r.returncode == 2 and "one machine" in r.stderr


def test_cluster_file_plans_like_the_options(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[cluster]\nname = "lab"\nnodes = 2\ngpus_per_node = 8\ngpu = "h100"\nhosts = ["gpu1", "gpu2"]\n')
    a = run_cli("plan", "llama-3.1-405b", "--quant", "bf16", "--cluster", str(f), "--json")
    b = run_cli("plan", "llama-3.1-405b", "--quant", "bf16", "--nodes", "2", "--gpus-per-node", "8",
                "--gpu", "h100", "--json")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    pa, pb = json.loads(a.stdout), json.loads(b.stdout)
    assert pa["plan"]["chosen"]["settings"] == pb["plan"]["chosen"]["settings"]
    assert "--pipeline-parallel-size" in pa["launch"]["argv"]
    r = run_cli("export", "docker", "llama-3.1-405b", "--quant", "bf16", "--cluster", str(f))
    assert r.returncode == 0 and '--master-addr gpu1' in r.stdout and "node 1 (gpu2)" in r.stdout


def test_helm_values_reference_the_secret_and_map_the_plan():
    c, [f] = artefacts("l4-qwen2.5-vl-7b", "helm")
    values = yaml.safe_load(f.content)["servingEngineSpec"]
    spec = values["modelSpec"][0]
    assert spec["modelURL"] == c.variant.repo and spec["requestGPU"] == 1
    assert spec["vllmConfig"]["maxModelLen"] == c.settings.max_model_len
    assert "--limit-mm-per-prompt" in spec["vllmConfig"]["extraArgs"]
    assert "--max-model-len" not in spec["vllmConfig"]["extraArgs"]
    assert values["vllmApiKey"]["secretKey"] == "api-key" and "kl-golden-key" not in f.content
    assert (spec["repository"], spec["tag"]) == tuple(c.settings.image.rsplit(":", 1))


def test_scheduler_reasons_that_waiting_cannot_change():
    from kanoa_local.backends.kube_api import is_final

    assert is_final("0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    assert is_final("0/3 nodes are available: 1 Insufficient cpu, 2 Insufficient nvidia.com/gpu.")
    assert is_final("0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are "
                    "available: 2 No preemption victims found for incoming pod.")
    # a volume not bound yet, a tainted node: may change, so `up` keeps waiting
    assert not is_final("0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 pod has unbound "
                        "immediate PersistentVolumeClaims.")
    assert not is_final("0/1 nodes are available: 1 node(s) had taint {node.kubernetes.io/not-ready: }, "
                        "that the pod didn't tolerate.")


def test_up_applies_the_secret_with_the_token_a_file_never_holds_it():
    from kanoa_local.export import layout_for
    from kanoa_local.export.k8s import objects

    c, [f] = artefacts("l4-qwen2.5-vl-7b", "k8s")
    opts = ExportOptions(name="x", image=c.settings.image)
    [secret] = [o for o in objects(c, layout_for(c), opts, api_key="kl-up", hf_token="hf_tok") if o["kind"] == "Secret"]
    assert secret["stringData"] == {"api-key": "kl-up", "hf-token": "hf_tok"}
    assert [o for o in objects(c, layout_for(c), opts) if o["kind"] == "Secret"] == []
    assert "kl-up" not in f.content and "hf_tok" not in f.content
