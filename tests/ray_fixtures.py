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

__all__ = ["Boards", "BOARDS", "BOARD_COMPUTE_US", "start_boards"]

BOARDS = 2
BOARD_COMPUTE_US = 20_000
#: Each board runs a replica or a Predictor actor, plus a task now and then.
_BOARD_CPUS = 2


@dataclass
class Boards:
    """The running cluster: ``address`` (``ray.init``, ``ez-rknn serve --ray``), the boards."""

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


def start_boards(count: int = BOARDS, compute_us: int = BOARD_COMPUTE_US) -> Boards:
    """A head without NPU and ``count`` boards (``compute_us`` per inference), all up (the
    fixture's cluster; benchmarks build theirs with it too). The caller shuts
    ``boards.cluster`` down."""
    emulator = emulator_build.build()
    board_env = {
        "EZ_RKNN_RUNTIME_LIB": str(emulator.library),
        "RKNN_EMU_SOC": "rk3588",
        "RKNN_EMU_COMPUTE_US": str(compute_us),
        # What a board's device tree tells the session; without it the session finds no SoC
        # and runs one core of the three.
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
            # The API server starts even without the dashboard. dashboard_port None: Ray tries
            # ports from 8265 on; given a port (its default) it test-binds it and, when another
            # cluster holds it, leaks that socket (a ResourceWarning, an error in this suite).
            "dashboard_port": None,
            # A killed board is declared dead (and its actors restart elsewhere) after 3
            # failed health checks 1 s apart instead of 5 checks 3 s apart; a check still
            # waits up to 10 s for a busy raylet's answer, so a slow board is not "dead".
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    boards = Boards(cluster, board_env)
    try:
        for _ in range(count):
            boards.add()
        cluster.wait_for_nodes()
    except BaseException:
        cluster.shutdown()
        raise
    return boards


@pytest.fixture(scope="session")
def ray_boards() -> Iterator[Boards]:
    """The cluster, with this process connected to it as a driver."""
    boards = start_boards()
    try:
        ray.init(address=boards.address, log_to_driver=False)
        yield boards
    finally:
        ray.shutdown()
        boards.cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
