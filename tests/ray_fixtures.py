"""A real local Ray cluster of emulated boards, shared by every Ray test of a session; load with
``pytest_plugins = ("ray_fixtures",)``.

The cluster is what users start with ``ray start --head`` and ``ray start --address`` on each
board, built with ``ray.cluster_utils.Cluster`` in a process of its own (``ray_cluster_keeper``):
a head node with no NPU (the Serve controller
and proxy, Ray Data's read tasks) and ``BOARDS`` board nodes, each advertising ``{"rknpu": 1}``
and running the emulated librknnrt of an RK3588 (3 cores, ``BOARD_COMPUTE_US`` per inference).
The emulator sleeps, so several boards fit a 2-CPU machine. Each node's raylet gets the
emulator through its environment (``env_vars``), which its workers inherit; this process's own
environment is not changed, so the other tests' emulator stays as they configure it.

A test that kills a board calls ``boards.replace(node)`` afterwards (a fresh board in its
place), so the tests after it see the same cluster shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rknn_emu import emulator_build

ray = pytest.importorskip("ray")

__all__ = ["Board", "Boards", "BOARDS", "BOARD_COMPUTE_US", "start_boards"]

BOARDS = 2
BOARD_COMPUTE_US = 20_000
#: Each board runs a replica or a Predictor actor, plus a task now and then.
_BOARD_CPUS = 2
_KEEPER = Path(__file__).resolve().parent / "ray_cluster_keeper.py"


@dataclass(frozen=True)
class Board:
    """A board node of the cluster, by its Ray node id."""

    node_id: str


@dataclass
class Boards:
    """The running cluster: ``address`` (``ray.init``, ``ez-rknn serve --ray``), the boards.

    Its nodes live in ``ray_cluster_keeper.py``'s process (see there why); this object asks it
    to add and kill boards.
    """

    keeper: subprocess.Popen
    address: str = ""
    head_node_id: str = ""
    nodes: list[Board] = field(default_factory=list)

    def _ask(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.keeper.stdin is not None and self.keeper.stdout is not None
        self.keeper.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.keeper.stdin.flush()
        for line in self.keeper.stdout:  # Ray's own lines may come first
            if line.startswith("REPLY "):
                reply = json.loads(line[len("REPLY ") :])
                if "error" in reply:
                    raise RuntimeError(f"the cluster keeper failed: {reply['error']}")
                return reply
        raise RuntimeError(f"the cluster keeper exited ({self.keeper.wait()}) during {op!r}")

    def add(self) -> Board:
        board = Board(self._ask("add")["node"])
        self.nodes.append(board)
        return board

    def kill(self, node: Board) -> None:
        """The board dies: its raylet and every worker on it are killed, no graceful exit."""
        self.nodes.remove(node)
        self._ask("kill", node=node.node_id)

    def replace(self, node: Board) -> Board:
        """Kill ``node`` if it still runs, and start a fresh board in its place."""
        if node in self.nodes:
            self.kill(node)
        return self.add()

    def node_ids(self) -> list[str]:
        return [node.node_id for node in self.nodes]

    def wait_free(self, timeout: float, holder: str) -> None:
        """Until every board's ``rknpu`` is free again (the cluster's state, polled: Ray tells
        no one when an actor's resources return); an AssertionError naming ``holder`` at
        ``timeout``."""
        deadline = time.monotonic() + timeout
        while ray.available_resources().get("rknpu", 0) < len(self.nodes):
            assert time.monotonic() < deadline, holder
            time.sleep(0.05)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every node (the keeper's end of input) and wait for it, bounded."""
        if self.keeper.stdin is not None:
            self.keeper.stdin.close()
        try:
            self.keeper.wait(timeout)
        except subprocess.TimeoutExpired:
            self.keeper.kill()
            self.keeper.wait()
        if self.keeper.stdout is not None:
            self.keeper.stdout.close()


def start_boards(count: int = BOARDS, compute_us: int = BOARD_COMPUTE_US) -> Boards:
    """A head without NPU and ``count`` boards (``compute_us`` per inference), all up (the
    fixture's cluster; benchmarks build theirs with it too). The caller calls ``shutdown``."""
    emulator = emulator_build.build()
    board_env = {
        "EZ_RKNN_RUNTIME_LIB": str(emulator.library),
        "RKNN_EMU_SOC": "rk3588",
        "RKNN_EMU_COMPUTE_US": str(compute_us),
        # What a board's device tree tells the session; without it the session finds no SoC
        # and runs one core of the three.
        "EZ_RKNN_SOC": "rk3588",
    }
    keeper = subprocess.Popen(
        [sys.executable, str(_KEEPER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    boards = Boards(keeper)
    try:
        started = boards._ask("start", count=count, board_env=board_env, board_cpus=_BOARD_CPUS)
    except BaseException:
        boards.shutdown()
        raise
    boards.address, boards.head_node_id = started["address"], started["head"]
    boards.nodes = [Board(node) for node in started["boards"]]
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
        boards.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
