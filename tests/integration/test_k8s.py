"""Kubernetes on a real control plane (scripts/k8s-control-plane.sh: etcd, kube-apiserver,
scheduler and controller-manager on 127.0.0.1; no kubelet, so pods are placed but never run):
the rendered manifests pass the API server's own dry run and are created; fake GPU nodes with
1 and 2 GPUs; a 2-GPU plan is scheduled, a 4-GPU plan is refused with the scheduler's reason;
`down` deletes everything by label; what the API server refuses is caught by kanoa-local first."""

from __future__ import annotations

import json
import time

import pytest

from kanoa_local.deploy import UpResult
from tests.conftest import run_cli

pytestmark = [pytest.mark.docker, pytest.mark.scaleout]   # root and the built control plane; no engine

NODES = {"gpu-one": 1, "gpu-two": 2}


@pytest.fixture(scope="module")
def cluster(k8s_cluster):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=k8s_cluster)
    core = client.CoreV1Api(api)

    def create(make, body):
        # idempotent: a POST the client retried after a slow first answer (a control plane just
        # started on a busy machine) finds its own object there
        try:
            make(body)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise

    for name, gpus in NODES.items():
        create(core.create_node, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        res = {"nvidia.com/gpu": str(gpus), "cpu": "16", "memory": "128Gi", "pods": "20"}
        core.patch_node_status(name, {"status": {"capacity": res, "allocatable": res, "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node"}]}})
        core.patch_node(name, {"spec": {"taints": None}})
    for i in range(3):                      # volumes for the weights claims (no provisioner here)
        create(core.create_persistent_volume, {"apiVersion": "v1", "kind": "PersistentVolume",
                                       "metadata": {"name": f"weights-{i}"},
                                       "spec": {"capacity": {"storage": "500Gi"}, "accessModes": ["ReadWriteOnce"],
                                                "hostPath": {"path": f"/tmp/kanoa-k8s-pv-{i}"}}})
    # a token as a user with access has one (meta-llama's repos are gated; nothing is downloaded here)
    yield {"KUBECONFIG": k8s_cluster, "HF_TOKEN": "hf_" + "k8stest" * 5}
    for name in NODES:
        core.delete_node(name)
    for i in range(3):
        core.delete_persistent_volume(f"weights-{i}")


def test_two_gpu_plan_is_scheduled_and_down_deletes_it(cluster):
    r = run_cli("up", "llama-3.1-70b", "--quant", "bf16", "--gpu", "h100", "--gpus-per-node", "2",
                "--target", "k8s", "--name", "two", "--no-wait", "--json", env=cluster, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    up = UpResult.model_validate_json(r.stdout)
    dep = up.deployment
    assert dep.runtime == "k8s" and dep.base_url == "http://kanoa-two.default.svc:8000/v1"
    from kanoa_local.backends import kube_api as k8s

    pods = k8s.pods("two", namespace="default", kubeconfig=cluster["KUBECONFIG"])
    assert [p["node"] for p in pods] == ["gpu-two"]          # the only node with 2 GPUs
    from kubernetes import client, config

    apps = client.AppsV1Api(config.new_client_from_config(config_file=cluster["KUBECONFIG"]))
    live = apps.read_namespaced_deployment("kanoa-two", "default").metadata.uid
    assert dep.place.uids["Deployment/kanoa-two"] == live     # the record knows the object, not only its name
    ps = json.loads(run_cli("ps", "--json", env=cluster).stdout)
    assert [(d["name"], d["runtime"], d["state"]) for d in ps["deployments"]] == [("two", "k8s", "running")]
    down = run_cli("down", "two", "--json", env=cluster)
    assert down.returncode == 0 and json.loads(down.stdout)["removed"] == ["two"]
    # no kubelet here to stop them: the pods are left terminating, as on a real node until it has
    assert all(p["terminating"] for p in k8s.pods("two", namespace="default", kubeconfig=cluster["KUBECONFIG"]))
    assert not k8s.exists("two", namespace="default", kubeconfig=cluster["KUBECONFIG"])
    # `up` of the same name while that deletion is under way: it waits, then says so in one
    # line, and creates nothing meanwhile (a replace would have been deleted with the rest)
    again = run_cli("up", "llama-3.1-70b", "--quant", "bf16", "--gpu", "h100", "--gpus-per-node", "2",
                    "--target", "k8s", "--name", "two", "--no-wait", "--timeout", "10", env=cluster, timeout=300)
    err = [ln for ln in again.stderr.splitlines() if ln.startswith("Error:")]
    assert again.returncode != 0 and len(err) == 1 and "still being deleted" in err[0], again.stderr
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=cluster["KUBECONFIG"]))
    assert not core.list_namespaced_secret("default", label_selector="io.kanoa-local/deployment=two").items


def test_a_plan_bigger_than_any_node_gets_the_schedulers_reason(cluster):
    plan = json.loads(run_cli("plan", "llama-3.1-70b", "--quant", "bf16", "--gpu", "l4", "--gpus-per-node", "4",
                              "--json").stdout)
    assert plan["plan"]["chosen"]["settings"]["tensor_parallel_size"] == 4
    r = run_cli("up", "llama-3.1-70b", "--quant", "bf16", "--gpu", "l4", "--gpus-per-node", "4",
                "--target", "k8s", "--name", "four", "--no-wait", "--timeout", "60", env=cluster, timeout=300)
    assert r.returncode == 7, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "Insufficient nvidia.com/gpu" in err[0] and "Traceback" not in r.stderr
    from kanoa_local.backends import kube_api as k8s

    assert not k8s.exists("four", namespace="default", kubeconfig=cluster["KUBECONFIG"])   # nothing left
    assert json.loads(run_cli("ps", "--json", env=cluster).stdout)["deployments"] == []


def test_the_api_server_refuses_what_kanoa_local_catches_first(cluster, tmp_path):
    """request != limit and a fractional GPU: the real API server's answer, and kanoa-local's
    own check giving it before any server is asked."""
    import yaml
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    from kanoa_local.errors import UsageError
    from kanoa_local.export.k8s import check_objects

    out = run_cli("export", "k8s", "qwen2.5-vl-7b", "--gpu", "l4", "-o", str(tmp_path))
    assert out.returncode == 0, out.stderr
    objs = list(yaml.safe_load_all((tmp_path / "kanoa-qwen2.5-vl-7b.yaml").read_text()))
    dep = next(o for o in objs if o["kind"] == "Deployment")
    apps = client.AppsV1Api(config.new_client_from_config(config_file=cluster["KUBECONFIG"]))
    apps.create_namespaced_deployment("default", dep, dry_run="All")        # as rendered: accepted
    res = dep["spec"]["template"]["spec"]["containers"][0]["resources"]
    for req, lim, server_says, ours in (("2", "1", "must be equal to nvidia.com/gpu limit", "differ"),
                                        ("0.5", "0.5", "must be an integer", "whole number")):
        res["requests"]["nvidia.com/gpu"], res["limits"]["nvidia.com/gpu"] = req, lim
        with pytest.raises(ApiException) as api_err:
            apps.create_namespaced_deployment("default", dep, dry_run="All")
        assert server_says in api_err.value.body
        with pytest.raises(UsageError, match=ours):
            check_objects(objs)


def test_a_deployment_made_anew_under_the_name_is_not_the_records(cluster):
    """The Deployment `up` created is deleted and another one made in its place, with the same
    name and labels (by hand, or a helm release): the record's own object is gone, so `ps` says
    dead with the reason, not running; `down` then clears what carries the name's labels."""
    from kubernetes import client, config

    r = run_cli("up", "llama-3.1-8b", "--gpu", "h100", "--target", "k8s", "--name", "anew", "--no-wait", "--json",
                env=cluster, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    apps = client.AppsV1Api(config.new_client_from_config(config_file=cluster["KUBECONFIG"]))
    try:
        old = apps.read_namespaced_deployment("kanoa-anew", "default")
        apps.delete_namespaced_deployment("kanoa-anew", "default", propagation_policy="Orphan")
        for _ in range(60):
            if not apps.list_namespaced_deployment("default", field_selector="metadata.name=kanoa-anew").items:
                break
            time.sleep(0.5)
        body = client.V1Deployment(metadata=client.V1ObjectMeta(name="kanoa-anew", labels=old.metadata.labels),
                                   spec=old.spec)
        made = apps.create_namespaced_deployment("default", body)
        assert made.metadata.uid != old.metadata.uid
        ps = json.loads(run_cli("ps", "--json", env=cluster).stdout)
        row = next(d for d in ps["deployments"] if d["name"] == "anew")
        assert row["state"] == "dead" and "made anew" in row["reason"], row
    finally:
        down = run_cli("down", "anew", "--json", env=cluster)
    assert down.returncode == 0, down.stderr
    left = apps.list_namespaced_deployment("default", label_selector="io.kanoa-local/deployment=anew").items
    assert all(d.metadata.deletion_timestamp for d in left)   # on its way out (no kubelet to stop its pods)


def test_another_users_deployment_of_the_same_name_is_never_touched(cluster):
    """A shared namespace: someone else's kanoa-local deployment `theirs` (their owner label).
    `ps` does not list it, `up` of that name refuses before changing anything, `down` finds no
    deployment of that name, and their objects stay."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=cluster["KUBECONFIG"])
    core = client.CoreV1Api(api)
    labels = {"app.kubernetes.io/managed-by": "kanoa-local", "io.kanoa-local/deployment": "theirs",
              "io.kanoa-local/owner": "someone-else"}
    core.create_namespaced_secret("default", {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                              "metadata": {"name": "kanoa-theirs-secrets", "labels": labels},
                                              "stringData": {"api-key": "kl-theirs"}})
    try:
        ps = json.loads(run_cli("ps", "--json", env=cluster).stdout)
        assert all(d["name"] != "theirs" for d in ps["deployments"])
        r = run_cli("up", "llama-3.1-8b", "--gpu", "h100", "--target", "k8s", "--name", "theirs", "--no-wait",
                    env=cluster, timeout=300)
        assert r.returncode == 2 and "another user" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert run_cli("down", "theirs", env=cluster).returncode == 8
        kept = core.read_namespaced_secret("kanoa-theirs-secrets", "default")
        assert kept.metadata.labels["io.kanoa-local/owner"] == "someone-else"
    finally:
        core.delete_namespaced_secret("kanoa-theirs-secrets", "default")
