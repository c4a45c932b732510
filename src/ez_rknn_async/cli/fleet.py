"""``ez-rknn serve --ray ADDRESS ...``: deploy the server on a Ray cluster's boards, or remove it.

The deployment itself is ``ez_rknn_async.ray.deployment`` (the ``[ray]`` extra); this module
turns the command line into its options and its errors into the CLI's (exit 1 with a hint).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from .commands.serve import model_specs_of, serve_token, total_request_bytes
from .errors import ExitCode, MissingDependencyError, RejectedInputError, UsageError

__all__ = ["run_on_ray"]


def run_on_ray(args: argparse.Namespace) -> int:
    try:
        from ..ray.cluster import FleetError
        from ..ray.deployment import FleetOptions, deploy, undeploy
    except ImportError as exc:
        raise MissingDependencyError(
            f"Ray Serve ({exc.name})", "pip install 'ez-rknn-async[ray]'"
        ) from exc
    try:
        if args.shutdown:
            if args.models or args.config:
                raise UsageError(
                    "--shutdown removes the whole application: it takes no MODEL nor --config",
                    hint=f"ez-rknn serve --ray {args.ray} --shutdown",
                )
            removed = undeploy(args.ray)
            print(
                f"removed the ez-rknn application from the cluster at {args.ray}"
                if removed
                else f"no ez-rknn application on the cluster at {args.ray}: nothing to remove"
            )
            return ExitCode.OK
        specs = [replace(spec, path=os.path.abspath(spec.path)) for spec in model_specs_of(args)]
        options = FleetOptions(
            replicas=args.replicas,
            host=args.host,
            port=args.port,
            token=serve_token(args.token),
            max_total_request_bytes=total_request_bytes(args, specs),
            max_queued_requests=args.max_queued,
            shutdown_timeout=args.shutdown_timeout,
            timeout=args.ready_timeout,
        )
        fleet = deploy(args.ray, specs, options)
    except FleetError as exc:
        raise RejectedInputError(str(exc), hint=exc.hint) from exc
    names = ", ".join(spec.name for spec in specs)
    print(
        f"serving {names} on {fleet.replicas} board(s) at {fleet.url} (/v2/models/NAME/infer); "
        f"each replica takes {fleet.max_ongoing_requests} requests at once, the proxy queues "
        f"{fleet.max_queued_requests} more",
        flush=True,
    )
    print(f"remove it with: ez-rknn serve --ray {args.ray} --shutdown", file=sys.stderr)
    return ExitCode.OK
