"""Worker slot layout from ``schedule`` / ``tp_mode`` / ``threads_per_core`` (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from ..backends.base import SlotSpec
from ..options import ProviderOptions

__all__ = ["plan_slots", "task_routes"]

_SINGLE_CORE_MASKS = {1: 1, 2: 1, 4: 1, 3: 2, 7: 3}


def plan_slots(options: ProviderOptions, default_cores: Sequence[int]) -> list[SlotSpec]:
    """One slot per (core, thread) pair.

    * ``schedule``: the distinct cores it names, each pinned (mask ``1 << core``).
    * ``tp_mode``: ``threads_per_core`` slots, none pinned, each bound to the tp mask; for the
      CPU backend a tp mask of k cores means k intra-op threads per task (0: the runtime's default).
    * neither: every core in ``default_cores`` gets pinned slots (our default; the original used
      a single AUTO context).
    Worker ``i`` serves ``cores[i % len(cores)]``, as in the original.
    """
    per_core = options.threads_per_core
    if options.tp_mode is not None:
        mask = options.tp_mask
        threads = _SINGLE_CORE_MASKS.get(mask or 0, 0)
        return [SlotSpec(i, None, mask, threads) for i in range(per_core)]
    cores = sorted(set(options.schedule)) if options.schedule else list(default_cores)
    return [
        SlotSpec(i, cores[i % len(cores)], 1 << cores[i % len(cores)])
        for i in range(per_core * len(cores))
    ]


def task_routes(options: ProviderOptions) -> Optional[tuple[int, ...]]:
    """The core sequence tasks are bound to, or None when any idle worker may take any task.

    Only a *weighted* schedule (a core repeated more often than another, e.g. ``[0, 0, 1]``) binds
    task ``n`` to ``schedule[n % len(schedule)]``. A uniform schedule spreads the same way on
    average, so it is left work-conserving: an idle worker never waits while another core's queue
    is full (the original's head-of-line blocking).
    """
    schedule = options.schedule
    if not schedule:
        return None
    counts = {core: schedule.count(core) for core in schedule}
    return None if len(set(counts.values())) == 1 else tuple(schedule)
