"""Kubernetes pods that really run: the test control plane plus a real kubelet node
(scripts/k8s-node.sh: dockershim on its own dockerd, a CNI bridge, the CPU image preloaded).
`up --target k8s` of the tiny model on a CPU plan reaches ready through the pods' own /health
probes; `status`, `logs` (through the API server and the kubelet), a chat from here and
`down` work on it."""

from __future__ import annotations

import json
import time

import pytest

from kanoa_local.deploy import PsReport, StatusReport, UpResult
from tests.conftest import SCRIPTS, run_cli, start_test_host

pytestmark = [pytest.mark.docker, pytest.mark.engine, pytest.mark.scaleout]


@pytest.fixture(scope="module")
def node(k8s_cluster):
    """A real node, kl-node; a volume for the weights claim. Stopped at the end."""
    import subprocess

    from kubernetes import client, config

    had_docker0 = subprocess.run(["ip", "link", "show", "docker0"], capture_output=True).returncode == 0
    facts = start_test_host("k8s-node.sh", "a kubelet node for the test control plane", 1800)
    # the node's own dockerd must leave the main daemon's bridge alone (every other test needs it)
    assert not had_docker0 or subprocess.run(["ip", "link", "show", "docker0"], capture_output=True).returncode == 0
    core = client.CoreV1Api(config.new_client_from_config(config_file=k8s_cluster))
    core.create_persistent_volume({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "weights-pod"},
                                   "spec": {"capacity": {"storage": "500Gi"}, "accessModes": ["ReadWriteOnce"],
                                            "hostPath": {"path": "/tmp/kanoa-k8s-pv-pod"}}})
    yield {**facts, "KUBECONFIG": k8s_cluster, "core": core}
    core.delete_persistent_volume("weights-pod")
    subprocess.run(["bash", str(SCRIPTS / "k8s-node.sh"), "stop"], capture_output=True, text=True, timeout=300)


def _chat_through_port_forward(core, pod: str, port: int, key: str, model: str) -> dict:
    """One completion over the API server's port-forward to the pod (what `kubectl port-forward`
    does), with the deployment's key."""
    from kubernetes.stream import portforward

    pf = portforward(core.connect_get_namespaced_pod_portforward, pod, "default", ports=str(port))
    sock = pf.socket(port)
    sock.setblocking(True)
    body = json.dumps({"model": model, "prompt": "total sales", "max_tokens": 2}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                 + body)
    data = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data and data.rstrip().endswith(b"}"):
            break
    sock.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:500]
    return json.loads(rest[rest.index(b"{"):])


def test_a_cpu_plan_serves_from_a_real_pod(node, tiny_model):
    env = {"KUBECONFIG": node["KUBECONFIG"]}
    r = run_cli("up", "--target", "k8s", "--model-path", str(tiny_model), "--cpu", "--image", node["KUBE_NODE_IMAGE"],
                "--name", "pod", "--json", "--timeout", "900", env=env, timeout=1000)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    up = UpResult.model_validate_json(r.stdout)
    try:
        assert up.deployment.runtime == "k8s" and up.ready is None
        st = StatusReport.model_validate_json(run_cli("status", "pod", "--json", env=env).stdout)
        assert st.state in ("running", "starting") and not st.reason     # the ClusterIP is not reachable from here
        ps = PsReport.model_validate_json(run_cli("ps", "--json", env=env).stdout)
        assert [(d.name, d.state, d.orphan) for d in ps.deployments] == [("pod", "running", False)]
        logs = run_cli("logs", "pod", "-n", "400", env=env)
        assert logs.returncode == 0 and "Application startup complete" in logs.stdout, logs.stdout[-2000:]
        from kanoa_local.backends import kube_api as k8s

        [p] = k8s.pods("pod", namespace="default", kubeconfig=node["KUBECONFIG"])
        assert p["node"] == node["KUBE_NODE"] and p["ready"]
        key = open(up.api_key_file).read().strip()
        out = _chat_through_port_forward(node["core"], p["name"], up.deployment.port, key,
                                         up.deployment.served_model_name)
        assert out["usage"]["completion_tokens"] >= 1
    finally:
        d = run_cli("down", "pod", "--json", env=env)
    assert d.returncode == 0 and json.loads(d.stdout)["removed"] == ["pod"], d.stderr
    from kanoa_local.backends import kube_api as k8s

    deadline = time.monotonic() + 120                     # a real kubelet stops the pod
    while time.monotonic() < deadline and k8s.pods("pod", namespace="default", kubeconfig=node["KUBECONFIG"]):
        time.sleep(2)
    assert k8s.pods("pod", namespace="default", kubeconfig=node["KUBECONFIG"]) == []
