"""Start, find, inspect and stop deployments: the library behind `up`, `down`, `ps`, `status`,
`logs` and `pull`, written once over the runtime contract (:mod:`kanoa_local.runtimes`).
Never prints or exits.

  prepare    the plan `up` serves, the weights (`pull`)
  targets    --host/--docker-host/$DOCKER_HOST/cluster/--target → runtime, hosts, listen address
  lifecycle  `up`: lock, reconcile, port, weights, attempts, retries
  reconcile  records against what runs (orphans, dead and unknown)
  inventory  `ps`, `down`, `connect`
  health     `status`, metrics, GPUs, `logs`
  k8s_up     `up --target k8s`
"""

from __future__ import annotations

from ..state import log_path
from .health import GpuUse, Metrics, StatusReport, follow_logs, gpu_use, log_lines, parse_metrics, served_cost, status
from .inventory import DownResult, PsReport, PsRow, TunnelReport, connect, down, ps, reopen_tunnel
from .lifecycle import UpResult, start, up
from .ports import pick_port, port_free
from .prepare import PullResult, hf_token, plan_for_up, pull
from .retry import MEMORY_FAILURES, next_attempt
from .targets import Target, check_docker_hosts, choose_runtime, node_addresses, resolve_target, smallest_node

__all__ = ["DownResult", "GpuUse", "MEMORY_FAILURES", "Metrics", "PsReport", "PsRow", "PullResult", "StatusReport",
           "Target", "TunnelReport", "UpResult", "check_docker_hosts", "choose_runtime", "connect", "down", "follow_logs", "gpu_use",
           "hf_token", "log_lines", "log_path", "next_attempt", "node_addresses", "parse_metrics", "pick_port",
           "plan_for_up", "port_free", "ps", "pull", "reopen_tunnel", "resolve_target", "served_cost", "smallest_node", "start",
           "status", "up"]
