"""Fixtures of the RKNPU3 tests; load with ``pytest_plugins = ("rknn3_fixtures",)``.

``npu3`` is the emulated librknn3_api of each ABI version (the test runs once per version), with
2 devices x 8 cores; after the test it fails on any rule violation or anything left alive.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rknn3_emu import Npu3, emulator3_build


@pytest.fixture(scope="session")
def emulator3() -> emulator3_build.Emulator3:
    return emulator3_build.build()


def _checked(npu: Npu3) -> Iterator[Npu3]:
    npu.use()
    yield npu
    assert npu.violations == npu.expected_violations, npu.last_violation
    assert npu.live_contexts == 0, "contexts left alive"
    assert npu.live_mems == 0, "tensor mems left alive"
    assert npu.live_allocations == 0, "emulator memory left allocated"


@pytest.fixture(params=sorted(emulator3_build.ABI_VERSIONS))
def npu3(request, emulator3, monkeypatch) -> Iterator[Npu3]:
    yield from _checked(Npu3(emulator3.library(request.param), monkeypatch.setenv))


@pytest.fixture
def npu3_11(emulator3, monkeypatch) -> Iterator[Npu3]:
    """ABI 1.1 only (for tests whose subject does not depend on the version)."""
    yield from _checked(Npu3(emulator3.library("1.1"), monkeypatch.setenv))
