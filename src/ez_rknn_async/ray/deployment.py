"""The fleet's Ray Serve application: one replica per board, speaking ``ez-rknn serve``'s protocol.

Each replica (``BoardServer``) is placed on a board through the custom resource ``rknpu`` (one
unit per board, so never two on one board) and holds what ``ez-rknn serve`` holds
(``serve.parts.ServerParts``): one ``InferenceSession`` per model over all of the board's NPU
cores, the in-flight limits, metrics, and the same Starlette app, which Ray Serve runs as the
replica's ASGI ingress. Behind Serve's HTTP proxy (on the head, port 8000 unless told) a client
sees the same ``/v2/...`` paths, bodies and error statuses as from one board; every response
also names the board that answered in the ``EZ-RKNN-Node`` header (its Ray node id).

Backpressure: Serve sends a replica at most ``max_ongoing_requests`` requests (``capacity``:
ten times the board's NPU slots plus its queue, per model, at most its ``max_inflight``); the
rest wait in the proxy, at most ``max_queued_requests``, past which the proxy answers 503 with
Retry-After.

A board that dies: the requests it was running fail with an error status from the proxy (500),
those not yet sent go to the other replicas, and Serve starts a replacement replica when a
board with a free ``rknpu`` joins. A replica whose session broke (a hung NPU) fails Serve's
health check and is replaced as well. Nothing is answered wrongly or left waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import ray
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.schema import ApplicationStatus
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..backends.rknn.kernel import read_core_loads
from ..serve.body_budget import DEFAULT_MAX_TOTAL_REQUEST_BYTES
from ..serve.config import ModelSpec
from ..serve.http import RETRY_AFTER_SECONDS
from ..serve.parts import ServerParts, drain_and_close
from . import BOARD_START
from .capacity import max_ongoing_requests, probe
from .cluster import RESOURCE, FleetError, board_nodes, connect

__all__ = [
    "APP_NAME",
    "NODE_HEADER",
    "BoardServer",
    "FleetOptions",
    "Fleet",
    "application",
    "deploy",
    "undeploy",
]

#: The Serve application's name (``ez-rknn serve --ray ... --shutdown`` removes it).
APP_NAME = "ez-rknn"
#: The response header naming the Ray node (board) whose replica answered.
NODE_HEADER = "EZ-RKNN-Node"


class _NodeHeader:
    """Plain ASGI middleware: every HTTP response names the node that made it."""

    def __init__(self, app: ASGIApp, node: str) -> None:
        self._app = app
        self._header = (NODE_HEADER.lower().encode(), node.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self._header]}
            await send(message)

        await self._app(scope, receive, send_named)


@serve.deployment
@serve.ingress()
class BoardServer:
    """One board's server: its models loaded (and warmed up) before Serve sends it a request."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        specs: Sequence[ModelSpec],
        max_total_request_bytes: int,
        token: Optional[str],
        shutdown_timeout: float,
    ) -> None:
        self._parts = ServerParts.build(specs, max_total_request_bytes, read_core_loads)
        self._token = token
        self._shutdown_timeout = shutdown_timeout
        await asyncio.get_running_loop().run_in_executor(None, self._parts.repository.load)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        node = ray.get_runtime_context().get_node_id()
        return _NodeHeader(self._parts.http_app(self._token), node)

    def check_health(self) -> None:
        """Serve replaces a replica whose check raises: one whose session broke (a hung NPU) or
        closed serves nothing any more."""
        repository = self._parts.repository
        if not repository.ready:
            states = {name: stats.state for name, stats in repository.engine_stats()}
            raise RuntimeError(f"a session is no longer open: {states}")

    async def __del__(self) -> None:
        """Serve drained the replica's requests; close the sessions within the deadline."""
        await drain_and_close(self._parts.repository, time.monotonic() + self._shutdown_timeout)


@dataclass(frozen=True)
class FleetOptions:
    """How to deploy: ``replicas`` None means one per board of the cluster."""

    replicas: Optional[int] = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: Optional[str] = None
    max_total_request_bytes: int = DEFAULT_MAX_TOTAL_REQUEST_BYTES
    #: requests waiting in the proxy when every replica is full; None: as many as they hold
    max_queued_requests: Optional[int] = None
    shutdown_timeout: float = 30.0
    #: the deadline of the whole deployment (probe, replicas loading and warming up)
    timeout: float = 120.0
    name: str = APP_NAME

    def __post_init__(self) -> None:
        """Refuse what Serve would take and then serve nothing with (0 replicas) or refuse
        later with its own words."""
        for key in ("replicas", "max_queued_requests"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"FleetOptions.{key}: expected an int >= 1 or None, got {value!r}")
        for key in ("timeout", "shutdown_timeout"):
            if not getattr(self, key) > 0:
                raise ValueError(
                    f"FleetOptions.{key}: expected seconds > 0, got {getattr(self, key)!r}"
                )


@dataclass(frozen=True)
class Fleet:
    """A running deployment: where it serves and how it is sized."""

    url: str
    name: str
    replicas: int
    max_ongoing_requests: int
    max_queued_requests: int


def application(
    specs: Sequence[ModelSpec],
    replicas: int,
    max_ongoing: int,
    options: FleetOptions = FleetOptions(),
) -> serve.Application:
    """The Serve application: ``replicas`` BoardServers, each taking ``max_ongoing`` requests at
    once (``capacity.max_ongoing_requests``)."""
    deployment: Any = BoardServer  # a serve.Deployment, which mypy cannot see through
    return deployment.options(
        name="board",
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=_max_queued(options, replicas, max_ongoing),
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_SECONDS),
        ray_actor_options={"num_cpus": 1, "resources": {RESOURCE: 1}},
        # a constructor that fails (a model that stopped loading) fails the deployment soon
        max_constructor_retry_count=2,
        graceful_shutdown_timeout_s=options.shutdown_timeout + 5,
        # how often a stopping replica looks whether its requests are done (Serve: every 2 s,
        # which every removal or redeployment waited at least once)
        graceful_shutdown_wait_loop_s=0.2,
        health_check_period_s=5,
    ).bind(list(specs), options.max_total_request_bytes, options.token, options.shutdown_timeout)


def _max_queued(options: FleetOptions, replicas: int, max_ongoing: int) -> int:
    """The proxy's queue: ``options.max_queued_requests``, or as many as the replicas take."""
    queued = options.max_queued_requests
    return replicas * max_ongoing if queued is None else queued


def _wait_running(name: str, deadline: float) -> None:
    """Until the application is RUNNING; else a FleetError with Serve's own messages, when it
    failed or the deadline passed."""
    while True:
        status = serve.status().applications.get(name)
        state = None if status is None else status.status
        if state == ApplicationStatus.RUNNING:
            return
        failed = (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY)
        if state in failed or time.monotonic() > deadline:
            details = "" if status is None else f"{status.message} ".strip()
            for deployment in [] if status is None else status.deployments.values():
                details += f" {deployment.message}".rstrip()
            reason = state if state != "DEPLOYING" else "not running before the deadline"
            raise FleetError(
                f"the application {name!r} did not start ({reason}): {details or 'no details'}",
                hint="`ray status` shows the boards; the replicas' logs are in /tmp/ray on each",
            )
        time.sleep(0.2)


def deploy(
    address: str, specs: Sequence[ModelSpec], options: FleetOptions = FleetOptions()
) -> Fleet:
    """Deploy ``specs`` on the cluster at ``address`` and return once every replica has loaded
    and warmed up its models; an application of the same name is replaced. Raises FleetError
    (within ``options.timeout``) when the cluster is missing, has fewer boards than
    ``options.replicas``, a model does not load on the boards, or Serve's proxy cannot listen
    at ``options.host``/``port``. A deployment that fails or is interrupted once Serve is
    started is removed, and Serve with it when it serves nothing else."""
    deadline = time.monotonic() + options.timeout
    connect(address)
    boards = len(board_nodes())
    replicas = boards if options.replicas is None else options.replicas
    if boards == 0 or replicas > boards:
        raise FleetError(
            f"{replicas or 'a'} replica(s) need as many boards, and the cluster has {boards} "
            f"(nodes with the `{RESOURCE}` resource)",
            hint=f"on each board: {BOARD_START} (`ez-rknn doctor` prints the line)",
        )
    if options.name in _applications():
        serve.delete(options.name)
    depths = probe(specs, max(1.0, deadline - time.monotonic()))
    max_ongoing = max_ongoing_requests(depths)
    try:
        _start_serve(options)
        app = application(specs, replicas, max_ongoing, options)
        serve.run_many(
            [serve.RunTarget(target=app, name=options.name, route_prefix="/")],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )
        _wait_running(options.name, deadline)
    except BaseException:
        # failed, past the deadline, or Ctrl-C: no half-deployed application is left holding
        # boards, nor a Serve without applications
        _remove(options.name)
        raise
    listening = _http_config()
    return Fleet(
        url=f"http://{listening.host}:{listening.port}",
        name=options.name,
        replicas=replicas,
        max_ongoing_requests=max_ongoing,
        max_queued_requests=_max_queued(options, replicas, max_ongoing),
    )


def _start_serve(options: FleetOptions) -> None:
    """Serve's proxy, listening where ``options`` say. A Serve already running elsewhere keeps
    its host and port (Serve only logs that the new ones are ignored): it is restarted when no
    other application uses it, else the deployment is refused, rather than serving at an
    address the user did not ask for."""
    wanted = (options.host, options.port)
    running = _http_config(raise_if_none=False)
    if running is not None and (running.host, running.port) != wanted:
        others = sorted(set(_applications()) - {options.name})
        if others:
            raise FleetError(
                f"Ray Serve on this cluster listens on {running.host}:{running.port} for "
                f"application(s) {others}; it cannot also listen on {options.host}:"
                f"{options.port}",
                hint=f"deploy with --host {running.host} --port {running.port}, or remove the "
                "other applications (`serve shutdown`)",
            )
        serve.shutdown()
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": wanted[0], "port": wanted[1]})
    except ray.exceptions.RayTaskError as exc:  # the proxy's, raised in its ready() task
        raise FleetError(
            f"Ray Serve's proxy cannot listen on {options.host}:{options.port} on the head: "
            f"{exc.cause}",
            hint="does another program hold that port there? choose another --port",
        ) from None


def _http_config(raise_if_none: bool = True) -> Any:
    """Where Serve's proxy listens (None: Serve is not running)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=raise_if_none)
    return None if client is None else client.http_config


def undeploy(address: str, name: str = APP_NAME) -> bool:
    """Remove the application (False: there was none); Serve itself is shut down when no other
    application is left, which frees its HTTP port."""
    connect(address)
    return _remove(name)


def _remove(name: str) -> bool:
    """``undeploy`` on the connected cluster; a Serve left without applications (one a failed
    deployment started, say) is shut down too."""
    present = name in _applications()
    if present:
        serve.delete(name)
    if not set(_applications()) - {name}:
        serve.shutdown()
    return present


def _applications() -> dict[str, Any]:
    """Serve's applications by name. A controller that another driver shut down since this
    one last asked is forgotten first: Serve's cached client would raise ActorDiedError."""
    from ray.serve.context import _check_cached_client_alive

    _check_cached_client_alive()
    return dict(serve.status().applications)
