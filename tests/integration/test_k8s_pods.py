"""Kubernetes pods that really run: the test control plane plus a real kubelet node
(scripts/k8s-node.sh: dockershim on its own dockerd, a CNI bridge, the CPU image preloaded).
`up --target k8s` of the tiny model on a CPU plan reaches ready through the pods' own /health
probes; `status`, `logs` (through the API server and the kubelet), a chat from here and
`down` work on it."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

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


def _pod_http(core, pod: str, port: int, method: str, path: str, key: str | None = None,
              body: dict | None = None) -> tuple[int, bytes]:
    """One request over the API server's port-forward to the pod (what `kubectl port-forward`
    does): (status, body)."""
    from kubernetes.stream import portforward

    pf = portforward(core.connect_get_namespaced_pod_portforward, pod, "default", ports=str(port))
    sock = pf.socket(port)
    sock.setblocking(True)
    data = json.dumps(body).encode() if body is not None else b""
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{auth}"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    sock.close()
    head, _, rest = out.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0, rest


class PodConnection:
    """HTTP/1.1 to a pod over one port-forward of the API server, kept alive between requests
    (a new port-forward only when the server closes the connection): fast enough to send every
    route of the server, as `kubectl port-forward` would carry them."""

    def __init__(self, core, pod: str, port: int) -> None:
        self.core, self.pod, self.port = core, pod, port
        self.conn: http.client.HTTPConnection | None = None
        self.pf: Any = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.pf is not None:
            self.pf.close()
        self.conn = self.pf = None

    def __call__(self, method: str, url: str, body: dict | None = None, api_key: str | None = None,
                 timeout: float = 60) -> tuple[int, str]:
        import http.client
        from urllib.parse import urlsplit

        from kubernetes.stream import portforward

        u = urlsplit(url)
        path = u.path + (f"?{u.query}" if u.query else "")
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        data = json.dumps(body).encode() if body is not None else None
        for _ in range(3):
            if self.conn is None:
                self.pf = portforward(self.core.connect_get_namespaced_pod_portforward, self.pod, "default",
                                      ports=str(self.port))
                sock = self.pf.socket(self.port)
                sock.setblocking(True)
                sock.settimeout(timeout)
                self.conn = http.client.HTTPConnection("localhost", self.port, timeout=timeout)
                self.conn.sock = sock
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                text = r.read().decode(errors="replace")
                if r.will_close:
                    self.close()
                return r.status, text
            except (http.client.HTTPException, OSError):
                self.close()
        return 0, "no answer over the port-forward"


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
        # `logs -f` follows the pod's own output (through the API server and the kubelet)
        import subprocess
        import sys

        from tests.conftest import ROOT, cli_env

        follow = subprocess.Popen([sys.executable, "-m", "kanoa_local", "logs", "-f", "pod"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(env))
        time.sleep(3)
        code, body = _pod_http(node["core"], p["name"], up.deployment.port, "POST", "/v1/completions", key,
                               {"model": up.deployment.served_model_name, "prompt": "total sales", "max_tokens": 2})
        assert code == 200, body[:500]
        assert json.loads(body[body.index(b"{"):body.rindex(b"}") + 1])["usage"]["completion_tokens"] >= 1
        # closed by default in the pod too (the guard comes from the ConfigMap): every route of the
        # running server's own table refuses a request without the key, or with a wrong one, but health
        from tests.conftest import assert_closed_but_health

        conn = PodConnection(node["core"], p["name"], up.deployment.port)
        try:
            routes = assert_closed_but_health("http://pod", key, request=conn)
        finally:
            conn.close()
        assert len(routes) > 20 and ("POST", "/invocations") in routes
    finally:
        d = run_cli("down", "pod", "--json", env=env)
    assert d.returncode == 0 and json.loads(d.stdout)["removed"] == ["pod"], d.stderr
    # the follower saw what was there and the requests made while it followed, and ends with the pod
    out, err = follow.communicate(timeout=180)
    assert follow.returncode == 0, err[-1500:]
    assert out.count("Application startup complete") == 1
    assert out.count('"POST /v1/completions') >= 1 and out.count('"GET /metrics') >= 1, out[-1500:]
    from kanoa_local.backends import kube_api as k8s

    deadline = time.monotonic() + 120                     # a real kubelet stops the pod
    while time.monotonic() < deadline and k8s.pods("pod", namespace="default", kubeconfig=node["KUBECONFIG"]):
        time.sleep(2)
    assert k8s.pods("pod", namespace="default", kubeconfig=node["KUBECONFIG"]) == []
