"""``ez-rknn serve MODEL..``: an inference server (KServe v2 / Triton protocol), HTTP and gRPC.

The command line only: the server itself is ``ez_rknn_async.serve`` (the ``[serve]`` extra),
imported when the command runs so that ``ez-rknn --help`` works without it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any, Optional

from ..args import RAW, convert, positive, require_file
from ..errors import (
    MODEL_HINT,
    ExitCode,
    MissingDependencyError,
    RejectedInputError,
    UsageError,
    user_input,
)

__all__ = ["register", "run", "serve_token", "model_specs_of", "total_request_bytes", "TOKEN_ENV"]

#: The environment variable ``serve`` reads its bearer token from (``--token`` wins).
TOKEN_ENV = "EZ_RKNN_SERVE_TOKEN"

_SERVE_DESCRIPTION = """\
Serve models over the Open Inference Protocol (KServe v2, the protocol of Triton), so existing
clients work unchanged: tritonclient (HTTP and gRPC), KServe clients, curl.

  HTTP  GET  /v2/health/live  /v2/health/ready  /v2  /v2/models/NAME  /v2/models/NAME/ready
        POST /v2/models/NAME/infer   (JSON tensors, or the binary tensor data extension)
        GET  /metrics                (Prometheus)
  gRPC  inference.GRPCInferenceService: ServerLive, ServerReady, ModelReady, ServerMetadata,
        ModelMetadata, ModelInfer

Each MODEL is [NAME=]PATH (NAME defaults to the file's stem) and gets its own session.
Ready means every model is loaded and has run one warm-up inference. Requests run through
the session's asyncio path; at most --max-inflight per model are admitted, others wait up to
the model's submit_timeout_ms and then get 503 + Retry-After (gRPC UNAVAILABLE). SIGTERM or
SIGINT: stop accepting (gRPC answers new calls UNAVAILABLE), answer every request in
flight, close the sessions, exit 0, all within --shutdown-timeout: an inference still
running then (a hung NPU) is abandoned, its session left broken and leaked rather than freed
under, and the exit code is 1. A model whose session is broken answers not-ready (HTTP
503, gRPC ready=false), and so does /v2/health/ready; its requests get 503 (UNAVAILABLE);
the other models keep serving.
"""

_SERVE_EPILOG = f"""\
config file (--config, JSON), per-model options:
  {{"models": {{"detector": {{"path": "yolov8n.rknn", "schedule": [0, 1, 2],
                            "max_queue_size": 6, "submit_timeout_ms": 2000,
                            "max_inflight": 48, "max_request_bytes": 16777216,
                            "warmup_shapes": {{"images": [1, 3, 640, 640]}}}}}}}}
  keys: path, any make_provider_options key (backend, schedule, threads_per_core, ...),
  max_inflight, max_request_bytes, warmup_shapes (for dynamic inputs)

security: binds 127.0.0.1 unless --host says otherwise; with --token (or {TOKEN_ENV})
every endpoint but /v2/health/* needs "Authorization: Bearer TOKEN" (gRPC: metadata
"authorization"); no path from a request is ever opened.

exit codes:
    0  stopped by SIGTERM or SIGINT after answering every request in flight; every
       session closed cleanly
    1  a model failed to load or to run its warm-up inference, or a port is taken; or, at
       the stop, a session had to be abandoned: an inference did not finish within
       --shutdown-timeout (or the session was already broken); the "stop:" line names it
    2  bad command line or --config (the message names the model and the key)
    3  a model file does not exist
    5  the [serve] extra is missing (pip command printed)

a fleet on Ray (the [ray] extra): --ray ADDRESS deploys the same server on a running Ray
cluster, one replica per board (a node started with --resources='{{"rknpu": 1}}'; `ez-rknn
doctor` prints its `ray start` line), and returns once every replica has loaded and warmed up
its models. The protocol is then served by Ray Serve's HTTP proxy on the head (--host,
--port: Serve's own, 8000 by default), same /v2 paths, HTTP only (no gRPC); each answer names
its board in the EZ-RKNN-Node header. MODEL paths are the boards' (the same on every board;
relative ones are made absolute here). Each replica takes ten times (board NPU slots +
max_queue_size) requests per model at once, at most --max-inflight; the proxy queues
--max-queued more, and answers 503 + Retry-After past that. --token works as on one board.
Ctrl-C before it is ready, a failure or --ready-timeout leaves no application deployed.
--grpc-port and --read-timeout do not apply.
  ez-rknn serve --ray HEAD:6379 det=/models/yolov8n.rknn [--replicas 4] [--port 8000]
  ez-rknn serve --ray HEAD:6379 --shutdown

examples:
  ez-rknn serve yolov8n.rknn
  ez-rknn serve det=yolov8n.rknn cls=mobilenet.onnx --host 0.0.0.0 --port 8000
  ez-rknn serve --config models.json --token "$(cat /etc/ez-rknn/token)"
"""


def _port(text: str) -> int:
    value = convert(int, text, f"not a port number: {text!r}")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535 (0: any free port), got {value}")
    return value


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve models over HTTP and gRPC (KServe v2 / Triton protocol)",
        description=_SERVE_DESCRIPTION,
        epilog=_SERVE_EPILOG,
        formatter_class=RAW,
    )
    serve.add_argument(
        "models", nargs="*", metavar="[NAME=]MODEL", help=".onnx or .rknn files to serve"
    )
    serve.add_argument("--config", metavar="FILE", help="JSON file of models and their options")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument(
        "--port", type=_port, default=8000, help="HTTP port (default: 8000; 0: any free port)"
    )
    serve.add_argument(
        "--grpc-port", type=_port, default=8001, help="gRPC port (default: 8001; 0: any free)"
    )
    serve.add_argument(
        "--token", help=f"bearer token required on every endpoint but health (or {TOKEN_ENV})"
    )
    serve.add_argument(
        "--max-inflight",
        type=positive(int),
        default=64,
        metavar="N",
        help="requests admitted at once per model (default: 64; config: max_inflight)",
    )
    serve.add_argument(
        "--max-request-mb",
        type=positive(float),
        default=64.0,
        metavar="MB",
        help="largest request body per model (default: 64; config: max_request_bytes)",
    )
    serve.add_argument(
        "--max-total-request-mb",
        type=positive(float),
        default=256.0,
        metavar="MB",
        help="request bytes all bodies being received or served may hold at once, HTTP and "
        "gRPC together; a request past it gets 503 + Retry-After (gRPC UNAVAILABLE), before "
        "its body is read when Content-Length tells (default: 256)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=positive(float),
        default=30.0,
        metavar="SECONDS",
        help="the bound of a stop: requests in flight are answered and sessions closed "
        "within it, else abandoned (exit 1) (default: 30)",
    )
    serve.add_argument(
        "--read-timeout",
        type=positive(float),
        default=30.0,
        metavar="SECONDS",
        help="a request's line and headers must arrive within it, and its body must not stall "
        "for it; else 400 and the connection is closed (default: 30)",
    )
    fleet = serve.add_argument_group("a fleet on Ray (--ray)")
    fleet.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="deploy on the Ray cluster at ADDRESS (HEAD:6379, or auto) and return once ready",
    )
    fleet.add_argument(
        "--shutdown", action="store_true", help="with --ray: remove the deployed application"
    )
    fleet.add_argument(
        "--replicas",
        type=positive(int),
        metavar="N",
        help="boards to serve on, one replica each (default: every board of the cluster)",
    )
    fleet.add_argument(
        "--max-queued",
        type=positive(int),
        metavar="N",
        help="requests the proxy holds while every replica is full; past it 503 "
        "(default: as many as the replicas take at once)",
    )
    fleet.add_argument(
        "--ready-timeout",
        type=positive(float),
        default=120.0,
        metavar="SECONDS",
        help="the deadline of a deployment: the replicas loaded and warmed up (default: 120)",
    )
    serve.set_defaults(func=run)


def serve_token(option: Optional[str]) -> Optional[str]:
    """The bearer token: ``--token``, else ``$EZ_RKNN_SERVE_TOKEN``, else none; an empty value
    counts as none (``Environment=EZ_RKNN_SERVE_TOKEN=`` in a unit file)."""
    return option or os.environ.get(TOKEN_ENV) or None


def total_request_bytes(args: argparse.Namespace, specs: Sequence[Any]) -> int:
    """``--max-total-request-mb`` in bytes; refused below a model's own body limit, which
    would make that model's largest requests fail for ever."""
    total = int(args.max_total_request_mb * 1024 * 1024)
    for spec in specs:
        if spec.max_request_bytes > total:
            raise UsageError(
                f"--max-total-request-mb {args.max_total_request_mb:g} ({total} bytes) is below "
                f"model {spec.name!r}'s max_request_bytes ({spec.max_request_bytes})",
                hint="raise --max-total-request-mb or lower the model's limit",
            )
    return total


def model_specs_of(args: argparse.Namespace) -> list[Any]:
    """The models to serve, from the arguments and --config."""
    try:
        from ...serve.config import ConfigError, model_specs
    except ImportError as exc:
        raise MissingDependencyError(
            f"the server's packages ({exc.name})", "pip install 'ez-rknn-async[serve]'"
        ) from exc
    try:
        return model_specs(
            args.models,
            args.config,
            max_inflight=args.max_inflight,
            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        )
    except ConfigError as exc:
        raise UsageError(str(exc), hint="see `ez-rknn serve --help`") from exc


def run(args: argparse.Namespace) -> int:
    if args.ray is not None:
        from ..fleet import run_on_ray

        return run_on_ray(args)
    if args.shutdown or args.replicas is not None or args.max_queued is not None:
        raise UsageError(
            "--shutdown, --replicas and --max-queued go with --ray ADDRESS",
            hint="see `ez-rknn serve --help`",
        )
    import asyncio
    import logging

    from ...backends.rknn.kernel import read_core_loads

    specs = model_specs_of(args)
    try:
        from ...serve.repository import WarmupError
        from ...serve.server import LOGGER, ServerOptions, serve
    except ImportError as exc:
        raise MissingDependencyError(
            f"the server's packages ({exc.name})", "pip install 'ez-rknn-async[serve]'"
        ) from exc
    for spec in specs:
        require_file(spec.path)
    handler = logging.StreamHandler()  # this run's stderr: removed when the run ends
    handler.setFormatter(logging.Formatter("%(asctime)s ez-rknn serve %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    options = ServerOptions(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        token=serve_token(args.token),
        shutdown_timeout=args.shutdown_timeout,
        read_timeout=args.read_timeout,
        max_total_request_bytes=total_request_bytes(args, specs),
    )
    try:
        with user_input(MODEL_HINT):  # a model or option the library refuses
            # per-core NPU load for /metrics, read at each scrape where the board exposes it
            abandoned = asyncio.run(serve(specs, options, npu_load=read_core_loads))
    except WarmupError as exc:
        raise RejectedInputError(str(exc), hint=exc.hint) from exc
    finally:
        LOGGER.removeHandler(handler)
    return ExitCode.ERROR if abandoned else ExitCode.OK
