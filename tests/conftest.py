"""Shared fixtures: real models, and a leaked-thread check around every test."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from onnx_models import add_mul_model, dynamic_hw_model, mixed_types_model, save, yolo_path

# A suite started as a background job of a non-interactive shell (`make test &`, some CI runners)
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, neither here nor
# in the processes the tests start. The Ctrl-C tests need the handler a terminal user has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the shared Ray cluster (``ray_boards``) run last, so the cluster's daemons,
    started by the first of them and stopped at the end of the session, do not share the two
    CPUs with the rest of the suite."""
    on_cluster = [item for item in items if "ray_boards" in getattr(item, "fixturenames", ())]
    if on_cluster:
        chosen = set(map(id, on_cluster))
        items[:] = [item for item in items if id(item) not in chosen] + on_cluster


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every engine thread a test starts must be gone when it ends (sessions closed)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5
    while True:
        leaked = [
            t.name
            for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("EzRknn")
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture(scope="session")
def yolo() -> str:
    return yolo_path()


@pytest.fixture
def add_mul_path(tmp_path) -> str:
    return save(tmp_path, "add_mul.onnx", add_mul_model())


@pytest.fixture
def mixed_path(tmp_path) -> str:
    return save(tmp_path, "mixed.onnx", mixed_types_model())


@pytest.fixture
def dynamic_path(tmp_path) -> str:
    return save(tmp_path, "dynamic.onnx", dynamic_hw_model())
