"""A fleet of boards on Ray (the ``[ray]`` extra): one model server per board, and batch jobs.

    deployment.py  the Ray Serve application: one replica per board (custom resource ``rknpu``),
                   each holding the served models' sessions over all of its board's NPU cores,
                   whose HTTP ingress is ``ez-rknn serve``'s Open Inference Protocol;
                   ``deploy(address, specs, FleetOptions(...))`` / ``undeploy(address)``
    capacity.py    a replica's ``max_ongoing_requests``, from its board's pipeline (probed)
    cluster.py     connecting to the cluster (``FleetError`` when it cannot), its boards
    predictor.py   ``Predictor``, a callable class for ``ray.data.Dataset.map_batches``

Each board advertises its NPU when it joins the cluster (``ez-rknn doctor`` prints the line):

    ray start --address HEAD:6379 --resources='{"rknpu": 1}'

Ray itself is imported only when a name of this package is used, so ``import ez_rknn_async``
never needs it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Predictor",
    "deploy",
    "undeploy",
    "application",
    "FleetOptions",
    "Fleet",
    "FleetError",
    "RESOURCE",
    "BOARD_START",
]

#: The custom resource each board advertises, one unit per board. Defined here, where Ray is
#: not imported, so that ``ez-rknn doctor`` prints the line below without the extra.
RESOURCE = "rknpu"
#: How a board joins the cluster as one NPU: ``ez-rknn doctor`` prints it, errors suggest it.
BOARD_START = f"ray start --address=HEAD:6379 --resources='{{\"{RESOURCE}\": 1}}'"

_HOMES = {
    "Predictor": ".predictor",
    "deploy": ".deployment",
    "undeploy": ".deployment",
    "application": ".deployment",
    "FleetOptions": ".deployment",
    "Fleet": ".deployment",
    "FleetError": ".cluster",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(home, __name__), name)
