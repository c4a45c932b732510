"""Fixtures of the RKNN backend tests; load with ``pytest_plugins = ("rknn_fixtures",)``.

``npu`` points ``EZ_RKNN_RUNTIME_LIB`` at the emulated librknnrt, emulates an RK3588, and after the
test fails it if the emulator saw a rule violation or a context destroyed before its dups, or still
holds a context, a buffer or a tensor mem.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rknn_emu import Npu, emulator_build


@pytest.fixture(scope="session")
def emulator() -> emulator_build.Emulator:
    return emulator_build.build()


@pytest.fixture
def npu(emulator, monkeypatch) -> Iterator[Npu]:
    """An RK3588 with 0 µs compute by default; ``npu.use(soc, compute_us)`` changes it."""
    monkeypatch.setenv("EZ_RKNN_RUNTIME_LIB", str(emulator.library))
    control = Npu(emulator, monkeypatch.setenv)
    control.use()
    yield control
    assert control.violations == control.expected_violations, control.last_violation
    if not control.tolerate_early_destroys:
        assert control.early_destroys == 0, "a context destroyed before its dups"
    assert control.live_contexts == 0, "contexts left alive"
    assert control.live_allocations == 0, "emulator memory left allocated"
    assert control.live_mems == 0, "tensor mems left alive"
