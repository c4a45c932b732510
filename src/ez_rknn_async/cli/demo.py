"""``ez-rknn demo`` (what ``make demo`` runs): a real YOLOv8n on the CPU, our three modes against
plain onnxruntime, in well under a minute.

It is ``bench`` with a fixed plan: the baseline is a plain onnxruntime session with one intra-op
thread run sequentially (what one NPU core or one CPU slot gives), next to onnxruntime's default
threading, so the speed-up column answers "what do the async modes buy me?" honestly.
"""

from __future__ import annotations

from .bench import Plan
from .measure import Budget
from .models import ShapeSpec, find_demo_model

__all__ = ["demo_plan", "DEMO_SECONDS"]

#: The model's input has dynamic height and width; it was trained at 320x320.
DEMO_INPUT_SHAPE = (1, 3, 320, 320)
#: Seconds per row: five rows plus warm-ups and loads stay well under a minute.
DEMO_SECONDS = 4.0


def demo_plan(seconds: float = DEMO_SECONDS) -> Plan:
    """The demo's plan on the nudenet YOLOv8n (320x320), random input."""
    return Plan(
        model=find_demo_model(),
        modes=("run", "async", "pipeline"),
        compare=("ort-1t", "ort"),
        budget=Budget(seconds=seconds),
        shapes=(ShapeSpec("images", DEMO_INPUT_SHAPE),),
        baseline="ort-1t",
    )
