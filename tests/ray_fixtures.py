"""A real local Ray cluster of emulated boards, shared by every Ray test of a session; load with
``pytest_plugins = ("ray_fixtures",)``.

The cluster is what users start with ``ray start --head`` and ``ray start --address`` on each
board, built with ``ray.cluster_utils.Cluster``: a head node with no NPU (the Serve controller
and proxy, Ray Data's read tasks) and ``BOARDS`` board nodes, each advertising ``{"rknpu": 1}``
and running the emulated librknnrt of an RK3588 (3 cores, ``BOARD_COMPUTE_US`` per inference).
The emulator sleeps, so several boards fit a 2-CPU machine. Each node's raylet gets the
emulator through its environment (``env_vars``), which its workers inherit; this process's own
environment is not changed, so the other tests' emulator stays as they configure it.

A test that kills a board calls ``boards.replace(node)`` afterwards (a fresh board in its
place), so the tests after it see the same cluster shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rknn_emu import emulator_build

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

__all__ = ["Boards", "BOARDS", "BOARD_COMPUTE_US"]

BOARDS = 2
BOARD_COMPUTE_US = 20_000
#: Each board runs a replica or a Predictor actor, plus a task now and then.
_BOARD_CPUS = 2


@dataclass
class Boards:
    """The running cluster: ``address`` (for ``ray.init``, ``ez-rknn serve --ray``), the boards."""

    cluster: Cluster
    board_env: dict[str, str]
    nodes: list[Any] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self) -> Any:
        node = self.cluster.add_node(
            num_cpus=_BOARD_CPUS, resources={"rknpu": 1}, env_vars=self.board_env
        )
        self.nodes.append(node)
        return node

    def kill(self, node: Any) -> None:
        """The board dies: its raylet and every worker on it are killed, no graceful exit."""
        self.nodes.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def replace(self, node: Any) -> Any:
        """Kill ``node`` if it still runs, and start a fresh board in its place."""
        if node in self.nodes:
            self.kill(node)
        fresh = self.add()
        self.cluster.wait_for_nodes()
        return fresh

    def node_ids(self) -> list[str]:
        return [node.node_id for node in self.nodes]


@pytest.fixture(scope="session")
def ray_boards() -> Iterator[Boards]:
    """The cluster, with this process connected to it as a driver."""
    emulator = emulator_build.build()
    board_env = {
        "EZ_RKNN_RUNTIME_LIB": str(emulator.library),
        "RKNN_EMU_SOC": "rk3588",
        "RKNN_EMU_COMPUTE_US": str(BOARD_COMPUTE_US),
        # what a board's device tree tells the backend: all 3 NPU cores get a worker
        "EZ_RKNN_SOC": "rk3588",
    }
    # The head has no NPU; its CPUs run Ray Data's read and split tasks. No dashboard: the
    # tests use the Python APIs, and it costs seconds at every start on this machine.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": False,
            "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"},
        },
    )
    boards = Boards(cluster, board_env)
    try:
        for _ in range(BOARDS):
            boards.add()
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield boards
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
