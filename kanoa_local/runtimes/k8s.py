"""The Kubernetes runtime: the plan's manifests applied to the cluster of $KUBECONFIG, found and
deleted by kanoa-local's label. An API server that does not answer makes a deployment
*unknown*. (The start itself — dry run, apply, scheduling, readiness — is
:func:`kanoa_local.deploy.k8s_up.up_k8s`: readiness there is the pods', not a token from here.)
"""

from __future__ import annotations

from typing import Any, Iterator

from ..backends import kube_api as k8s
from ..errors import ConfigError, EngineError
from ..state import Deployment, K8sPlace, owner_id
from .base import ALIVE, Cleanup, Found, Launched, LaunchRequest, Liveness, Runtime, Unreachable


def _where(place: K8sPlace) -> dict[str, Any]:
    return {"namespace": place.namespace, "kubeconfig": place.kubeconfig, "context": place.context,
            "owner": place.owner or None}


class K8sRuntime(Runtime):
    kind = "k8s"

    def launch(self, req: LaunchRequest, cleanup: Cleanup, **hooks: Any) -> Launched:
        raise NotImplementedError("Kubernetes starts through deploy.k8s_up")

    def liveness(self, dep: Deployment) -> Liveness:
        place = dep.place
        assert isinstance(place, K8sPlace)
        try:
            st = k8s.state(dep.name, uids=place.uids, **_where(place))
        except (EngineError, ConfigError) as exc:
            return Liveness(state="unknown", reason=f"the Kubernetes API server did not answer ({exc.message})")
        if st == "replaced":
            return Liveness(state="dead", reason=f"the Deployment {dep.name} in {place.namespace} was deleted and "
                                                 "made anew since this record (another uid)")
        return ALIVE if st == "alive" else Liveness(state="dead", reason=f"no Deployment {dep.name} in {place.namespace}")

    def stop(self, name: str, place: Any) -> None:
        assert isinstance(place, K8sPlace)
        try:
            k8s.delete(name, **_where(place))
        except k8s.ApiUnreachable as exc:
            raise Unreachable(f"could not delete {name} in {place.namespace}: {exc.message}",
                              remedy="the record is kept: run `kanoa-local down` again once the cluster answers") from exc

    def logs(self, dep: Deployment, tail: int | None = None) -> list[str]:
        place = dep.place
        assert isinstance(place, K8sPlace)
        try:
            text = k8s.pod_logs(dep.name, tail=tail, **_where(place))
        except (EngineError, ConfigError) as exc:
            return [f"(the pod's log could not be read: {exc.message})"]
        return str(text).splitlines()

    def follow(self, dep: Deployment) -> Iterator[str]:
        place = dep.place
        assert isinstance(place, K8sPlace)
        return iter(k8s.pod_logs(dep.name, follow=True, **_where(place)))

    def discover(self, hosts: list[Any]) -> tuple[list[Found], list[str]]:
        """kanoa-local's Deployments in the namespaces on record (``hosts``: K8sPlace)."""
        found, unreachable = [], []
        for place in {(p.namespace, p.kubeconfig, p.context): p for p in hosts}.values():
            try:
                names = k8s.deployment_names(place.namespace, kubeconfig=place.kubeconfig, context=place.context,
                                             owner=owner_id())
            except (EngineError, ConfigError):
                unreachable.append(f"Kubernetes namespace {place.namespace}")
                continue
            found += [Found(name=n, place=place.model_copy(update={"uids": {}, "owner": owner_id()})) for n in names]
        return found, unreachable
