"""``ez-rknn serve --ray``: the protocol served by a fleet of emulated boards through Ray Serve.

The cluster is ``ray_fixtures``'s (a head and two boards, each an emulated RK3588: 3 cores,
20 ms per inference). The module's fleet is deployed the way a user deploys it, by the
``ez-rknn serve --ray`` command in a subprocess, and reached through Serve's HTTP proxy by the
real ``tritonclient.http`` and by raw HTTP (which reads the ``EZ-RKNN-Node`` header naming the
board that answered: that is how requests are counted per board). It serves two models: ``emu``
over all three cores of each board, and ``slow`` on one core with a queue of one; both admit
few requests (``max_inflight``), so that the replicas fill up quickly (the backpressure test).
The last tests kill a board under traffic and remove the application; the fixture removes it in
any case, so the other Ray tests find no Serve application running.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest
import tritonclient.http as thttp
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from rknn_emu import IMAGE_CLASSIFIER, reference
from serve_process import binary_infer_request, infer_input

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from ez_rknn_async.cli.main import main  # noqa: E402
from ez_rknn_async.ray.capacity import ModelDepth, max_ongoing_requests  # noqa: E402
from ez_rknn_async.ray.cluster import FleetError  # noqa: E402
from ez_rknn_async.ray.deployment import (  # noqa: E402
    APP_NAME,
    NODE_HEADER,
    FleetOptions,
    _applications,
    _http_config,
    deploy,
    undeploy,
)
from ez_rknn_async.serve.config import model_specs  # noqa: E402

pytest_plugins = ("ray_fixtures",)

EMU = IMAGE_CLASSIFIER
#: A command's whole run, cluster connection included, must end within this.
COMMAND_DEADLINE_S = 90
CLIENT_TIMEOUT_S = 20
_SERVING = re.compile(r"serving (.+) on (\d+) board\(s\) at http://([\d.]+):(\d+)")


def command(*args: str, pre: str = "") -> list[str]:
    """The console command's argv (``pre``: Python run before it, in its process)."""
    main = "from ez_rknn_async.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", f"import sys\n{pre}\n{main}", *args]


def ez_rknn(*args: str, pre: str = "", env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """The console command run in a subprocess (``env``: added to this process's)."""
    return subprocess.run(
        command(*args, pre=pre),
        capture_output=True,
        text=True,
        timeout=COMMAND_DEADLINE_S,
        env=None if env is None else {**os.environ, **env},
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Fleet:
    address: str
    port: int
    model_path: str
    output: str


@pytest.fixture(scope="module")
def fleet(ray_boards, tmp_path_factory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("fleet")  # the same path on every node of this machine
    model = str(EMU.write(folder / "emu.rknn"))
    config = folder / "fleet.json"
    config.write_text(
        json.dumps(
            {
                "models": {
                    "slow": {
                        "path": model,
                        "schedule": [0],
                        "max_queue_size": 1,
                        "max_inflight": 3,
                    }
                }
            }
        )
    )
    port = free_port()
    done = ez_rknn(
        "serve",
        "--ray",
        ray_boards.address,
        f"emu={model}",
        "--config",
        str(config),
        "--port",
        str(port),
        "--max-inflight",
        "5",
    )
    try:
        assert done.returncode == 0, done.stderr
        yield Fleet(ray_boards.address, port, model, done.stdout)
    finally:
        undeploy(ray_boards.address)


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)


def expected(image: np.ndarray) -> np.ndarray:
    return reference(EMU, [image])[0]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    node: str = field(init=False)

    def __post_init__(self) -> None:
        self.node = self.headers.get(NODE_HEADER.lower(), "")

    def scores(self) -> np.ndarray:
        (output,) = json.loads(self.body)["outputs"]
        return np.asarray(output["data"], np.float32).reshape(output["shape"])


def post_infer(port: int, model: str, image: np.ndarray, token: str = "") -> Answer:
    """One infer request with the binary tensor extension, raw: the response's headers kept."""
    body, headers = binary_infer_request("image", image, "UINT8")
    if token:
        headers = {**headers, "Authorization": f"Bearer {token}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body, headers)
        response = connection.getresponse()
        received = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, received, response.read())
    finally:
        connection.close()


def test_the_command_says_where_it_serves(fleet, ray_boards):
    found = _SERVING.search(fleet.output)
    assert found, fleet.output
    assert found.group(1) == "slow, emu" and found.group(2) == "2"
    assert int(found.group(4)) == fleet.port
    # per replica: emu min(5, 10 x (3 cores + 3 queued)) + slow min(3, 10 x (1 core + 1))
    assert "each replica takes 8 requests at once, the proxy queues 16 more" in fleet.output
    assert serve.status().applications[APP_NAME].status == "RUNNING"


def test_answers_are_right_and_spread_over_the_boards(fleet, ray_boards):
    answered, errors = [], []

    def client(index: int) -> None:
        connection = thttp.InferenceServerClient(f"127.0.0.1:{fleet.port}")
        try:
            assert connection.is_server_ready() and connection.is_model_ready("emu")
            assert connection.get_model_metadata("emu")["inputs"][0]["name"] == "image"
            for k in range(6):
                image = frame(index * 100 + k)
                inputs = [infer_input(thttp, "image", image, "UINT8")]
                result = connection.infer("emu", inputs, request_id=f"{index}-{k}")
                assert result.get_response()["id"] == f"{index}-{k}"
                np.testing.assert_array_equal(result.as_numpy("scores"), expected(image))
                answered.append((index, k))
        except BaseException as exc:  # the test fails on it below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S * 2)
    assert not errors, errors
    assert sorted(answered) == [(i, k) for i in range(6) for k in range(6)]
    # Serve's router picks the less loaded of two random replicas: both boards take part. Its
    # proxy may learn of the second replica a moment after the application is RUNNING, so
    # requests go on until each board answered 5 (of 40 if the proxy knew both at once).
    nodes: Counter[str] = Counter()
    for seed in range(200):
        image = frame(1000 + seed)
        answer = post_infer(fleet.port, "emu", image)
        assert answer.status == 200, answer.body
        np.testing.assert_array_equal(answer.scores(), expected(image))
        nodes[answer.node] += 1
        if len(nodes) == 2 and min(nodes.values()) >= 5:
            break
    assert set(nodes) == set(ray_boards.node_ids()), nodes
    assert min(nodes.values()) >= 5, nodes


def test_a_replica_runs_its_model_on_every_core_of_its_board(fleet):
    """The replica's own /metrics (the one Serve routed the scrape to): its sessions' slots."""
    connection = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=CLIENT_TIMEOUT_S)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        connection.close()
    cores: dict[str, set[str]] = {"emu": set(), "slow": set()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ez_rknn_engine_slot") and "core" in sample.labels:
                cores[sample.labels["model"]].add(sample.labels["core"])
    assert cores == {"emu": {"0", "1", "2"}, "slow": {"0"}}


def test_refused_requests_keep_the_replicas_serving(fleet, ray_boards):
    client = thttp.InferenceServerClient(f"127.0.0.1:{fleet.port}")
    try:
        wrong_name = infer_input(thttp, "img", frame(1), "UINT8")
        with pytest.raises(InferenceServerException, match="unknown input name") as refused:
            client.infer("emu", [wrong_name])
        assert refused.value.status() == "400" and "'img'" in refused.value.message()
        wrong_shape = infer_input(thttp, "image", np.zeros((1, 3, 4, 4), np.uint8), "UINT8")
        with pytest.raises(InferenceServerException) as refused:
            client.infer("emu", [wrong_shape])
        assert refused.value.status() == "400" and "image" in refused.value.message()
        with pytest.raises(InferenceServerException, match="unknown model 'nope'") as missing:
            client.infer("nope", [infer_input(thttp, "image", frame(1), "UINT8")])
        assert missing.value.status() == "404"
        with pytest.raises(InferenceServerException, match="no version '7'") as missing:
            client.get_model_metadata("emu", model_version="7")
        assert missing.value.status() == "404"
    finally:
        client.close()
    answered: set[str] = set()
    for seed in range(40):  # both replicas still answer, and right
        image = frame(2000 + seed)
        answer = post_infer(fleet.port, "emu", image)
        assert answer.status == 200
        np.testing.assert_array_equal(answer.scores(), expected(image))
        answered.add(answer.node)
        if answered == set(ray_boards.node_ids()):
            break
    assert answered == set(ray_boards.node_ids())


def test_full_replicas_and_a_full_proxy_queue_give_503(fleet):
    """``slow`` runs one inference at a time per board, and a replica takes 8 requests: 16 run
    or wait in the replicas (160 ms of work each), 16 more wait in the proxy. 48 clients send
    back to back, so requests past those 32 come all the time: they get 503 + Retry-After at
    once, not an unbounded wait, and the others their right answer."""
    clients = 48
    answers: list[Answer] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    progress = threading.Condition()

    def full(statuses: Counter) -> bool:
        return statuses[200] >= 2 * 8 and statuses[503] >= 1

    def send(index: int) -> None:
        seed = 3000 + 1000 * index
        try:
            while not stop.is_set():
                seed += 1
                image = frame(seed)
                answer = post_infer(fleet.port, "slow", image)
                if answer.status == 200:
                    np.testing.assert_array_equal(answer.scores(), expected(image))
                with progress:
                    answers.append(answer)
                    progress.notify_all()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        with progress:
            progress.wait_for(
                lambda: errors or full(Counter(answer.status for answer in answers)), timeout=30
            )
    finally:
        stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S * 2)
    assert not errors, errors
    statuses = Counter(answer.status for answer in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert full(statuses), statuses
    for answer in answers:
        if answer.status == 503:
            assert answer.headers["retry-after"] == "1"
            assert b"backpressure" in answer.body


def test_missing_boards_or_model_a_wrong_port_and_no_cluster_are_clear_errors(fleet, ray_boards):
    started = time.monotonic()
    with pytest.raises(FleetError, match=r"3 replica\(s\) need as many boards.* has 2") as error:
        deploy(
            ray_boards.address, model_specs([f"emu={fleet.model_path}"]), FleetOptions(replicas=3)
        )
    assert "--resources" in error.value.hint
    assert time.monotonic() - started < 10
    # a second application: every board's rknpu is the first one's, so none can take it
    started = time.monotonic()
    with pytest.raises(FleetError, match="no board opened the models within") as error:
        specs = model_specs([f"emu={fleet.model_path}"])
        deploy(ray_boards.address, specs, FleetOptions(name="second", timeout=3))
    assert "held by other work" in error.value.hint
    assert time.monotonic() - started < 10
    assert "second" not in serve.status().applications
    assert serve.status().applications[APP_NAME].status == "RUNNING"  # left alone
    # Serve's port instead of the head's, a usual slip: said at once (Ray retried for minutes)
    proxy = f"127.0.0.1:{fleet.port}"
    done = ez_rknn("serve", "--ray", proxy, f"emu={fleet.model_path}")
    assert done.returncode == 1
    assert f"error: {proxy} is not a Ray cluster's head" in done.stderr, done.stderr
    assert "port 6379 by default" in done.stderr
    # the same slip through RAY_ADDRESS, which `--ray auto` takes
    done = ez_rknn("serve", "--ray", "auto", f"emu={fleet.model_path}", env={"RAY_ADDRESS": proxy})
    assert done.returncode == 1
    assert f"error: {proxy} is not a Ray cluster's head" in done.stderr, done.stderr
    nowhere = f"127.0.0.1:{free_port()}"
    done = ez_rknn("serve", "--ray", nowhere, f"emu={fleet.model_path}")
    assert done.returncode == 1
    assert (
        f"error: no Ray cluster at {nowhere}" in done.stderr and "ray start --head" in done.stderr
    )


def test_without_ray_the_command_names_the_extra(fleet):
    done = ez_rknn(
        "serve", "--ray", "auto", f"emu={fleet.model_path}", pre="sys.modules['ray'] = None"
    )
    assert done.returncode == 5
    assert "Ray Serve (ray) is not installed" in done.stderr
    assert "pip install 'ez-rknn-async[ray]'" in done.stderr


def test_a_board_that_dies_under_traffic_loses_nothing_silently(fleet, ray_boards):
    """Six clients send without pause; a board is killed (no graceful exit) while they do.
    Every request gets the right answer or an error status, none hangs (the clients have
    timeouts), and then the traffic goes on, answered by the board that is left."""
    victim, survivor = ray_boards.nodes[0], ray_boards.nodes[1]
    clients = 6
    stop = threading.Event()
    lock = threading.Lock()
    answered: list[tuple[float, str]] = []  # (when, node) of each right answer
    failures: Counter[int] = Counter()
    errors: list[BaseException] = []
    progress = threading.Condition(lock)

    def client(index: int) -> None:
        seed = 10_000 * (index + 1)
        try:
            while not stop.is_set():
                seed += 1
                image = frame(seed)
                answer = post_infer(fleet.port, "emu", image)
                with progress:
                    if answer.status == 200:
                        np.testing.assert_array_equal(answer.scores(), expected(image))
                        answered.append((time.monotonic(), answer.node))
                    else:
                        assert answer.status >= 500, (answer.status, answer.body)
                        failures[answer.status] += 1
                    progress.notify_all()
        except BaseException as exc:  # a timeout (a hang) or a wrong answer fails the test
            errors.append(exc)
            stop.set()
            with progress:
                progress.notify_all()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        with progress:
            assert progress.wait_for(lambda: len(answered) >= 20 or errors, timeout=30)
        ray_boards.kill(victim)
        killed = time.monotonic()
        with progress:
            after = lambda: [node for when, node in answered if when > killed + 1.0]  # noqa: E731
            assert progress.wait_for(lambda: len(after()) >= 20 or errors, timeout=45), failures
    finally:
        stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S * 2)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    assert set(after()) == {survivor.node_id}
    assert set(failures) <= {500, 502, 503, 504}, failures
    ray_boards.replace(victim)


def test_redeployed_on_one_board_with_a_token_at_another_port(fleet, ray_boards):
    """``--ray auto`` (the address from RAY_ADDRESS, as in a Ray job), ``--replicas 1``,
    ``--token`` and another ``--port``: the application is replaced by one on one board, Serve
    moves to the new port (left alone, it keeps its first port and only logs that), and every
    request but health needs the token, as from ``ez-rknn serve``."""
    port, token = free_port(), "s3cret"
    args = ("serve", "--ray", "auto", f"emu={fleet.model_path}", "--replicas", "1")
    done = ez_rknn(*args, "--port", str(port), "--token", token, env={"RAY_ADDRESS": fleet.address})
    assert done.returncode == 0, done.stderr
    assert f"serving emu on 1 board(s) at http://127.0.0.1:{port} " in done.stdout
    with pytest.raises(OSError):  # nothing listens on the first port any more
        post_infer(fleet.port, "emu", frame(1))
    fleet.port = port  # the next test removes this deployment
    client = thttp.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_ready()  # health needs no token
        with pytest.raises(InferenceServerException, match="bearer token") as refused:
            client.get_model_metadata("emu")
        assert refused.value.status() == "401"
        assert client.get_model_metadata("emu", headers={"Authorization": f"Bearer {token}"})
    finally:
        client.close()
    assert post_infer(port, "emu", frame(1), token="wrong").status == 401
    nodes: Counter[str] = Counter()
    for seed in range(12):
        image = frame(4000 + seed)
        answer = post_infer(port, "emu", image, token=token)
        assert answer.status == 200, answer.body
        np.testing.assert_array_equal(answer.scores(), expected(image))
        nodes[answer.node] += 1
    assert len(nodes) == 1 and set(nodes) <= set(ray_boards.node_ids()), nodes


def test_shutdown_removes_the_application(fleet, capsys):
    done = ez_rknn("serve", "--ray", fleet.address, "--shutdown")
    assert done.returncode == 0, done.stderr
    assert "removed the ez-rknn application" in done.stdout
    assert not undeploy(fleet.address)  # gone for this driver too
    with pytest.raises(OSError):  # Serve itself is gone with its last application
        post_infer(fleet.port, "emu", frame(1))
    # again, in this process (a driver of the cluster already: no second start-up to wait for)
    assert main(["serve", "--ray", fleet.address, "--shutdown"]) == 0
    assert "nothing to remove" in capsys.readouterr().out
    # the boards are free again: a model they do not have is named before anything is deployed
    ghost = model_specs([f"ghost={fleet.model_path}.missing"])
    with pytest.raises(FleetError, match=r"model 'ghost' \(.*\.missing\) does not load on board"):
        deploy(fleet.address, ghost, FleetOptions(timeout=30))
    assert not undeploy(fleet.address)


def test_ctrl_c_while_deploying_leaves_nothing_deployed(fleet, ray_boards):
    """One board's ``rknpu`` is held, so of two replicas one waits for a board, and the command
    with it; Ctrl-C (SIGINT) then removes the half-made application and Serve with it (its
    port free again) rather than leaving a replica waiting to take the next free board."""
    undeploy(fleet.address)  # whatever the tests before left deployed

    @ray.remote(num_cpus=0, resources={"rknpu": 1})
    class Holder:  # defined here: Ray pickles it by value (workers cannot import this module)
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote(), timeout=CLIENT_TIMEOUT_S)
    port = free_port()
    deploying = subprocess.Popen(
        command("serve", "--ray", fleet.address, f"emu={fleet.model_path}", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + COMMAND_DEADLINE_S
        while APP_NAME not in _applications():  # the cluster's state, polled
            assert deploying.poll() is None, deploying.communicate()
            assert time.monotonic() < deadline, "the application never appeared"
            time.sleep(0.1)
        deploying.send_signal(signal.SIGINT)
        _, stderr = deploying.communicate(timeout=COMMAND_DEADLINE_S)
    finally:
        if deploying.poll() is None:
            deploying.kill()
            deploying.communicate()
        ray.kill(holder)
    assert deploying.returncode == 130 and "interrupted" in stderr, stderr
    assert APP_NAME not in _applications()
    with pytest.raises(OSError):
        post_infer(port, "emu", frame(1))
    ray_boards.wait_free(CLIENT_TIMEOUT_S, "a board is still held")


def test_a_port_taken_on_the_head_is_a_clear_error_and_leaves_no_serve(fleet, ray_boards):
    undeploy(fleet.address)  # whatever the tests before left deployed: Serve is not running
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FleetError, match=f"proxy cannot listen on 127.0.0.1:{port}") as error:
            deploy(fleet.address, model_specs([f"emu={fleet.model_path}"]), FleetOptions(port=port))
    assert "Failed to bind" in str(error.value) and "--port" in error.value.hint
    assert _http_config(raise_if_none=False) is None  # Serve's controller is gone too


def test_a_replica_holds_ten_pipelines_per_model_within_its_max_inflight():
    rk3588 = ModelDepth("detector", slots=3, max_queue_size=3, max_inflight=64)
    assert rk3588.depth == 6 and rk3588.ongoing == 60
    capped = ModelDepth("embedder", slots=3, max_queue_size=3, max_inflight=16)
    assert capped.ongoing == 16
    two_threads = ModelDepth("tiny", slots=6, max_queue_size=2, max_inflight=64)
    assert max_ongoing_requests([rk3588, capped, two_threads]) == 60 + 16 + 64


def test_command_line_slips_are_said_before_connecting(capsys):
    """A URL for the head's address, models given to --shutdown: refused with the fix, before
    any cluster is joined (in this process, which may be a driver already)."""
    url = "http://127.0.0.1:6379"
    assert main(["serve", "--ray", url, "emu=/models/emu.rknn"]) == 1
    error = capsys.readouterr().err
    assert f"error: --ray '{url}': expected HOST:PORT of the cluster's head" in error, error
    assert main(["serve", "--ray", "127.0.0.1:6379", "--shutdown", "emu=/models/emu.rknn"]) == 2
    error = capsys.readouterr().err
    assert "error: --shutdown removes the whole application: it takes no MODEL" in error, error
    assert "hint: ez-rknn serve --ray 127.0.0.1:6379 --shutdown" in error


@pytest.mark.parametrize(
    "key, value",
    [("replicas", 0), ("replicas", 1.5), ("max_queued_requests", -1), ("timeout", 0)],
)
def test_fleet_options_refuse_what_serve_cannot_use(key, value):
    with pytest.raises(ValueError, match=rf"FleetOptions.{key}: expected .*, got {value!r}"):
        FleetOptions(**{key: value})
