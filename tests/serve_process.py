"""``ez-rknn serve`` in a subprocess, as a user runs it, for the tests and the benchmark.

``ServerProcess`` starts the console command with ``--port 0 --grpc-port 0`` (free ports, on
loopback), reads the ports from its "start:" log line, and waits for readiness by polling
``/v2/health/ready`` until a deadline. Its log lines are kept for assertions.

``emulated=(soc, compute_us)`` runs the same ``main`` through this file's ``__main__``, which
first configures the emulated NPU (``rknn_emu_configure`` has no environment variable) and, after
the server exits, turns an emulator rule violation or a leaked context into exit code 70 (the
exit line says how many of each). The ``env`` given names the library and the SoC
(``EZ_RKNN_RUNTIME_LIB``, ``EZ_RKNN_SOC``).

An emulated server also takes two test-only signals (``block_next_run``, ``break_hung``):
SIGUSR1 makes the next ``rknn_run`` stop inside the emulator until the process ends (a hung
NPU), SIGUSR2 closes, with a short deadline, every session that has an inference running, so
it becomes BROKEN as a hung session does (the engine's own close; nothing is faked). Each
prints a line when done, for ``wait_line``.
"""

from __future__ import annotations

import ctypes
import gc
import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

__all__ = ["ServerProcess", "EMULATOR_FAILED", "infer_input", "binary_infer_request"]

EMULATOR_FAILED = 70
_START = re.compile(r"start: .* HTTP on http://([\d.]+):(\d+), gRPC on [\d.]+:(\d+)")
_BLOCKING = re.compile(r"rknn-emu: the next rknn_run blocks")
_BROKE = re.compile(r"rknn-emu: closed (\d+) hung session\(s\)")
#: The deadline SIGUSR2 gives the close of a hung session.
BREAK_DEADLINE_S = 0.2


def infer_input(module: Any, name: str, array: Any, datatype: str, binary: bool = True) -> Any:
    """A tritonclient input of ``module`` (``tritonclient.http`` or ``.grpc``) holding
    ``array``; HTTP sends it as binary data unless ``binary`` is False (JSON)."""
    tensor = module.InferInput(name, list(array.shape), datatype)
    if module.__name__ == "tritonclient.http":
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def binary_infer_request(
    name: str, array: Any, datatype: str, binary_output: bool = False
) -> tuple[bytes, dict[str, str]]:
    """A raw infer request (body, headers) with one input as binary data, as tritonclient
    sends it, for tests that need what a client library hides (the response's headers)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "parameters": {"binary_data_output": binary_output},
        }
    ).encode()
    return header + array.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


class ServerProcess:
    """One server; use as a context manager (SIGTERM and a bounded wait on the way out)."""

    def __init__(
        self,
        args: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        emulated: Optional[tuple[str, int]] = None,
    ) -> None:
        serve = ["serve", *args, "--port", "0", "--grpc-port", "0"]
        if emulated is None:
            command = [sys.executable, "-m", "ez_rknn_async.cli", *serve]
        else:
            soc, compute_us = emulated
            command = [sys.executable, __file__, soc, str(compute_us), *serve]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.log: list[str] = []
        self._stopping = False  # a shutdown signal was sent (see ``send``)
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.host = "127.0.0.1"
        self.http_port = self.grpc_port = 0

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def wait_line(self, pattern: re.Pattern, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                line = ""
            if line is None:
                raise RuntimeError("the server exited:\n" + "\n".join(self.log))
            found = pattern.search(line or "")
            if found:
                return found
            if remaining <= 0:
                raise TimeoutError(f"no {pattern.pattern!r} line:\n" + "\n".join(self.log))

    def listening(self, timeout: float = 60.0) -> ServerProcess:
        """Wait for the "start:" line (ports bound; the models may still be loading)."""
        if not self.http_port:
            found = self.wait_line(_START, timeout)
            self.host, self.http_port, self.grpc_port = found[1], int(found[2]), int(found[3])
        return self

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Wait for the ports, then for readiness (models loaded and warmed up)."""
        deadline = time.monotonic() + timeout
        self.listening(timeout)
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not get ready:\n" + "\n".join(self.log))
            time.sleep(0.05)  # polling, bounded by the deadline
        return self

    def _ready(self) -> bool:
        try:
            return self.get("/v2/health/ready")[0] == 200
        except ConnectionError:
            return False

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One raw HTTP request: (status, headers, body)."""
        connection = http.client.HTTPConnection(self.host, self.http_port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def get(self, path: str, headers: Optional[Mapping[str, str]] = None) -> tuple[int, bytes]:
        status, _, body = self.request("GET", path, headers=headers)
        return status, body

    def metric(self, line_start: str, headers: Optional[Mapping[str, str]] = None) -> float:
        """The value of the /metrics sample whose line starts with ``line_start`` (0 if absent)."""
        status, text = self.get("/metrics", headers)
        assert status == 200, text
        for line in text.decode().splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def send(self, sig: int) -> None:
        """Send ``sig`` (the shutdown signals once: a second SIGTERM may end a server that is
        already past its drain with the default action, as a second Ctrl-C does)."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self._stopping:
                return
            self._stopping = True
        self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` unless a shutdown signal was already sent, and wait for the exit code
        (bounded)."""
        if self.process.poll() is None:
            self.send(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def block_next_run(self, timeout: float = 10.0) -> None:
        """An emulated server only: its next ``rknn_run`` never returns by itself."""
        self.process.send_signal(signal.SIGUSR1)
        self.wait_line(_BLOCKING, timeout)

    def break_hung(self, timeout: float = 10.0) -> int:
        """An emulated server only: close every session with an inference running, with a
        ``BREAK_DEADLINE_S`` deadline (so it is abandoned: BROKEN); how many were."""
        self.process.send_signal(signal.SIGUSR2)
        return int(self.wait_line(_BROKE, timeout)[1])

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # safe from a signal handler, unlike print


def _close_hung_sessions() -> None:
    from ez_rknn_async import InferenceSession

    sessions = [o for o in gc.get_objects() if isinstance(o, InferenceSession)]
    hung = [s for s in sessions if s.stats().state == "open" and s.stats().running]
    for session in hung:
        session.close(BREAK_DEADLINE_S)
    _say(f"rknn-emu: closed {len(hung)} hung session(s)")


def _install_test_signals(library: ctypes.CDLL) -> None:
    def block(signum: int, frame: Any) -> None:
        library.rknn_emu_block_runs(1)
        _say("rknn-emu: the next rknn_run blocks")

    def close_hung(signum: int, frame: Any) -> None:  # close() waits: not on the event loop
        threading.Thread(target=_close_hung_sessions, daemon=True).start()

    signal.signal(signal.SIGUSR1, block)
    signal.signal(signal.SIGUSR2, close_hung)


def _run_emulated(soc: str, compute_us: int, argv: list[str]) -> int:
    from ez_rknn_async.cli.main import main

    library = ctypes.CDLL(os.environ["EZ_RKNN_RUNTIME_LIB"])  # the backend's own handle
    if library.rknn_emu_configure(soc.encode(), compute_us) != 0:
        return EMULATOR_FAILED
    _install_test_signals(library)
    code = main(argv)
    violations, contexts = library.rknn_emu_violations(), library.rknn_emu_live_contexts()
    if violations or contexts:
        print(f"rknn-emu: {violations} violation(s), {contexts} context(s) alive", flush=True)
        return code or EMULATOR_FAILED
    return code


if __name__ == "__main__":
    sys.exit(_run_emulated(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
