"""The process that owns the tests' local Ray cluster (``ray.cluster_utils.Cluster``).

Starting a Ray node forks and runs Python in the child before ``exec`` (Ray's ``preexec_fn``).
Forked from the test process, which by then has gRPC, onnxruntime and the engines' threads, the
child can stop on a lock one of those threads held at the fork, and the head's GCS then never
starts ("Timed out waiting for file .../gcs_server_port_..."). Nodes are therefore started and
killed here, in a process that runs nothing else, as ``ray start`` on a board would; the tests
and benchmarks only connect to the cluster as drivers.

Protocol: one JSON request per line on stdin, one reply line per request on stdout starting with
``REPLY `` (Ray's own lines may come between). End of input shuts the cluster down.

    {"op": "start", "count": N, "board_env": {...}, "board_cpus": C}
        -> {"address": "HOST:PORT", "head": NODE_ID, "boards": [NODE_ID, ...]}
    {"op": "add"} -> {"node": NODE_ID}
    {"op": "kill", "node": NODE_ID} -> {}
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ray.cluster_utils import Cluster

REPLY = "REPLY "

_HEAD_ARGS = {
    # The head has no NPU; its CPUs run Ray Data's read and split tasks.
    "num_cpus": 2,
    # No dashboard: the tests use the Python APIs, and it costs seconds at every start.
    "include_dashboard": False,
    "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"},
    # The API server starts even without the dashboard. dashboard_port None: Ray tries ports
    # from 8265 on; given a port (its default) it test-binds it and, when another cluster holds
    # it, leaks that socket.
    "dashboard_port": None,
    # A killed board is declared dead (and its actors restart elsewhere) after 3 failed health
    # checks 1 s apart instead of 5 checks 3 s apart; a check still waits up to 10 s for a busy
    # raylet's answer, so a slow board is not "dead".
    "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
}


class Keeper:
    def __init__(self) -> None:
        self.cluster: Any = None
        self.nodes: dict[str, Any] = {}
        self.board_env: dict[str, str] = {}
        self.board_cpus = 1

    def start(self, count: int, board_env: dict[str, str], board_cpus: int) -> dict[str, Any]:
        self.cluster = Cluster(initialize_head=True, head_node_args=_HEAD_ARGS)
        self.board_env, self.board_cpus = board_env, board_cpus
        boards = [self.add()["node"] for _ in range(count)]
        return {
            "address": self.cluster.address,
            "head": self.cluster.head_node.node_id,
            "boards": boards,
        }

    def add(self) -> dict[str, Any]:
        node = self.cluster.add_node(
            num_cpus=self.board_cpus, resources={"rknpu": 1}, env_vars=self.board_env
        )
        self.cluster.wait_for_nodes()
        self.nodes[node.node_id] = node
        return {"node": node.node_id}

    def kill(self, node: str) -> dict[str, Any]:
        self.cluster.remove_node(self.nodes.pop(node), allow_graceful=False)
        return {}

    def serve(self) -> None:
        try:
            for line in sys.stdin:
                request = json.loads(line)
                op = request.pop("op")
                try:
                    reply = getattr(self, op)(**request)
                except Exception as exc:  # said to the test, which raises it
                    reply = {"error": f"{op}: {type(exc).__name__}: {exc}"}
                print(REPLY + json.dumps(reply), flush=True)
        finally:
            if self.cluster is not None:
                self.cluster.shutdown()


if __name__ == "__main__":
    Keeper().serve()
