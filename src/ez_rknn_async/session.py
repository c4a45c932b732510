"""``InferenceSession``: the public facade.

It normalises feeds and names once on the caller's thread, picks the backend, lays out the worker
slots and hands every task to the engine. ``run``, ``run_async``, ``run_pipeline``, ``submit`` and
``arun`` are variations on one path: validate -> engine -> outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from concurrent.futures import Future, wait
from typing import Any, Callable, Optional

import numpy as np

from .backends import Backend, ModelSource, load_backend
from .engine.admission import SpaceWaiter
from .engine.aio import submit_async
from .engine.core import Engine, EngineConfig, State
from .engine.layout import plan_slots, task_routes
from .engine.pipeline import Pipeline
from .engine.stats import SessionStats
from .errors import SessionClosedError
from .feeds import copy_for_async, normalize_feed, resolve_outputs, run_option, split_batch
from .iobinding import SessionIOBinding, SessionMemory, launch
from .options import ProviderOptions, parse_bool, parse_provider_options, provider_options_of
from .tensors import ModelMetadata, NodeArg

__all__ = ["InferenceSession"]

DISPATCH_BATCH = "ztu_modelrt_dispatch_batch"
#: The runner method of an I/O-binding task (``Runner.run_binding``).
_RUN_BINDING = "run_binding"


class InferenceSession:
    """An onnxruntime-compatible session whose tasks run on a pool of worker slots.

    ``path_or_bytes``: a ``.onnx`` or ``.rknn`` path, or the model's bytes. ``provider_options``:
    the dict from ``make_provider_options`` (or a one-element list of it). ``sess_options`` and
    ``providers`` are honoured by the onnxruntime backend (thread counts excepted: the engine owns
    them). ``use_weight_from``: another session whose weights this one shares.
    """

    def __init__(
        self,
        path_or_bytes: Any,
        sess_options: Any = None,
        providers: Optional[Sequence[Any]] = None,
        provider_options: Any = None,
        *,
        use_weight_from: Optional[InferenceSession] = None,
    ) -> None:
        self._engine: Optional[Engine] = None
        if use_weight_from is not None:
            if not isinstance(use_weight_from, InferenceSession):
                raise TypeError(
                    "use_weight_from must be an InferenceSession or None, "
                    f"got {type(use_weight_from).__name__}"
                )
            use_weight_from._check_open()
        options = parse_provider_options(provider_options)
        source = ModelSource.from_user(path_or_bytes)
        backend = load_backend(
            source,
            options,
            sess_options=sess_options,
            providers=providers,
            share_with=None if use_weight_from is None else use_weight_from._backend,
        )
        self._start(backend, options, use_weight_from)

    @classmethod
    def _on_backend(cls, backend: Backend, provider_options: Any = None) -> InferenceSession:
        """A session on a backend made by the caller (``testing.FakeBackend``, a backend under
        development): everything but the model loading. The session closes the backend."""
        session = cls.__new__(cls)
        session._engine = None
        session._start(backend, parse_provider_options(provider_options), None)
        return session

    def _start(
        self, backend: Backend, options: ProviderOptions, weights_from: Optional[InferenceSession]
    ) -> None:
        self._backend: Backend = backend
        self._options = options
        self._weights_from = weights_from  # the owner of shared weights outlives this session
        self._zero_copy = SessionMemory(backend)
        self._engine = _start_engine(backend, options)
        self._pipeline = Pipeline()
        self._inputs = list(backend.inputs)
        self._outputs = list(backend.outputs)
        self._all_outputs = tuple(range(len(self._outputs)))
        self._batch_inputs = [
            dataclasses.replace(spec, shape=(None, *spec.shape[1:])) if spec.shape else spec
            for spec in self._inputs
        ]

    # -- calling modes -------------------------------------------------------------------------

    def run(
        self, output_names: Optional[Sequence[str]], input_feed: Any, run_options: Any = None
    ) -> list[np.ndarray]:
        """Run one inference and return the requested outputs (all when ``output_names`` is
        None or empty). Runs on the calling thread when a worker slot is idle."""
        engine = self._check_open()
        indices = self._output_indices(output_names)
        if run_options is not None and _dispatch_batch(run_options):
            return self._run_batch(indices, input_feed)
        arrays = self._arrays(input_feed)
        return engine.run_inline(arrays, indices)

    def run_async(
        self,
        output_names: Optional[Sequence[str]],
        input_feed: Any,
        callback: Callable[[Optional[list[np.ndarray]], Any, str], Any],
        user_data: Any = None,
        run_options: Any = None,
    ) -> None:
        """Queue one inference and return at once.

        ``callback(results, user_data, err)`` is called one at a time, on the session's callback
        thread or, while callbacks take under 0.1 ms on average, on the worker that completed it
        (a thread switch less per task; ``engine/ordering.py``):
        ``results`` is the list of outputs and ``err == ""`` on success; ``results`` is None and
        ``err`` the message on failure. With ``sequential_callbacks`` (default) callbacks come in
        submission order. An exception raised by the callback is reported through
        ``sys.unraisablehook`` and the session goes on. Inputs are copied, so the caller may reuse
        its arrays at once. Blocks only while the queue is full (up to ``submit_timeout_ms``).
        ``input_feed`` may be an IOBinding (``output_names`` None): ``results`` are then its bound
        output OrtValues.
        """
        engine = self._check_open()
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        job = self._prepare_async("run_async", output_names, input_feed, run_options)
        job.submit_callback(engine, callback, user_data)

    def submit(
        self, output_names: Optional[Sequence[str]], input_feed: Any, run_options: Any = None
    ) -> Future:
        """Queue one inference; the returned ``concurrent.futures.Future`` gets the outputs.
        ``input_feed`` may be an IOBinding (``output_names`` None): the future then gets its bound
        output OrtValues, so zero-copy frames pipeline across the workers (one binding per frame
        in flight)."""
        engine = self._check_open()
        return self._prepare_async("submit", output_names, input_feed, run_options).submit(engine)

    async def arun(
        self, output_names: Optional[Sequence[str]], input_feed: Any, run_options: Any = None
    ) -> list[np.ndarray]:
        """``await`` one inference from asyncio. Never blocks the event loop, and holds no thread
        while the queue is full: it waits for space on the loop itself (``engine.aio``), up to
        ``submit_timeout_ms``. Cancelling the awaiting task cancels the inference if it has not
        started. Takes an IOBinding as ``submit`` does."""
        engine = self._check_open()
        job = self._prepare_async("arun", output_names, input_feed, run_options)
        future = await submit_async(
            engine, lambda waiter: job.submit(engine, blocking=False, waiter=waiter), "arun"
        )
        return await asyncio.wrap_future(future)

    def run_pipeline(
        self, input_feed: Any, depth: int = 3, reset: bool = False
    ) -> Optional[list[np.ndarray]]:
        """Submit a frame and return the outputs of the frame submitted ``depth`` calls earlier
        (None while the pipeline fills). ``reset=True`` or a new ``depth`` discards the frames in
        flight; ``drain_pipeline()`` returns them instead."""
        engine = self._check_open()
        if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
            raise TypeError(f"depth must be an integer, got {type(depth).__name__}")
        if depth <= 0:
            raise ValueError(f"pipeline depth must be > 0, got {depth}")
        arrays = copy_for_async(self._arrays(input_feed))
        indices = self._all_outputs
        return self._pipeline.push(
            lambda: engine.enqueue(arrays, indices, "run_pipeline"), int(depth), reset
        )

    def io_binding(self) -> SessionIOBinding:
        """A new I/O binding for zero-copy runs (``iobinding`` module; SPEC.md 12.3)."""
        self._check_open()
        return SessionIOBinding(self)

    def run_with_iobinding(
        self,
        iobinding: Optional[SessionIOBinding] = None,
        run_options: Any = None,
        *,
        io_binding: Optional[SessionIOBinding] = None,
    ) -> None:
        """Run one inference on the values bound in ``iobinding``; the outputs land in its bound
        output values. Like ``run``, it takes a worker slot (on the calling thread when one is
        idle), so it never races the workers. ``io_binding=`` is the original library's name
        for the same argument (``iobinding`` is onnxruntime's)."""
        engine = self._check_open()
        if (iobinding is None) == (io_binding is None):
            raise TypeError(
                "run_with_iobinding takes one IOBinding, as iobinding (onnxruntime's name) or "
                "io_binding (the original's)"
            )
        binding = iobinding if iobinding is not None else io_binding
        _reject_dispatch_batch("run_with_iobinding", run_options)
        launch(
            self._zero_copy,
            binding,
            "run_with_iobinding",
            lambda flight: engine.run_inline(flight, (), method=_RUN_BINDING),
        )

    def drain_pipeline(self) -> list[list[np.ndarray]]:
        """Wait for the frames still in the pipeline and return their outputs, oldest first.
        The pipeline is empty afterwards (the next ``run_pipeline`` starts filling again)."""
        self._check_open()
        return self._pipeline.drain()

    # -- introspection ---------------------------------------------------------------------

    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg.from_spec(spec) for spec in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg.from_spec(spec) for spec in self._outputs]

    def get_native_inputs(self) -> list[NodeArg]:
        return [NodeArg.from_spec(spec) for spec in self._backend.native_inputs]

    def get_native_outputs(self) -> list[NodeArg]:
        return [NodeArg.from_spec(spec) for spec in self._backend.native_outputs]

    def get_modelmeta(self) -> ModelMetadata:
        return self._backend.metadata

    def get_providers(self) -> list[str]:
        return list(self._backend.providers)

    def get_provider_options(self) -> dict[str, dict[str, Any]]:
        """onnxruntime's shape, ``{provider: {option: value}}`` with plain values: the options
        in force (validated, defaults filled in) under the provider that runs."""
        rknpu3 = self._backend.name == "rknn3"
        return provider_options_of(self.get_providers(), self._options, rknpu3=rknpu3)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self._outputs]

    @property
    def backend_name(self) -> str:
        """Which runtime serves this session: "onnxruntime", "rknn" or "openvino"."""
        return self._backend.name

    @property
    def worker_slots(self) -> list:
        """The worker slots the engine runs (core, core mask, threads), for tools and tests."""
        return self._require_engine().slot_specs

    def stats(self) -> SessionStats:
        """A snapshot of the engine: state, queue, per-slot busy time and counts, queue waits,
        totals (``SessionStats``; works on a closed or broken session too)."""
        return self._require_engine().stats()

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop the workers, fail queued tasks with ``SessionClosedError``, deliver pending
        callbacks, release the backend. Idempotent; every later call raises at once.

        ``timeout`` (seconds, default 10) bounds the whole close: an inference or a callback
        still running then is abandoned, not freed under. Its worker, runner and the backend are
        leaked on purpose, its task gets ``SessionBrokenError`` (a ``run_async`` callback is
        called with that error), a ``RuntimeWarning`` says so once, ``stats().state`` is
        ``"broken"`` and every later call raises ``SessionBrokenError``."""
        engine = self._engine
        if engine is None or engine.state is not State.OPEN:
            return
        self._zero_copy.close()  # values and bindings refuse calls; the backend frees buffers
        # First: it wakes a run_pipeline caller blocked on a full queue. Only the call that
        # closed the engine goes on, so a concurrent close() never frees the backend under a
        # running task.
        try:
            closed_here = engine.close(timeout)
        except BaseException:
            # A Ctrl-C while the engine waited: it still finished closing (CLOSED, or BROKEN
            # for what was running) before passing the interrupt on. No later close() comes
            # back here, so the rest of the teardown happens now.
            if engine.closed_by_current_thread():
                self._release(engine)
            raise
        if closed_here:
            self._release(engine)

    def _release(self, engine: Engine) -> None:
        """The teardown after this thread closed ``engine``: the pipeline, then the backend."""
        self._pipeline.discard()
        if engine.state is State.BROKEN:
            return  # a thread may still be inside the backend: never free it
        try:
            self._backend.close()
        finally:
            self._weights_from = None  # even if the backend failed to release something

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_engine", None) is not None:
            self.close()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            f"cannot pickle {type(self).__name__!r} object: a session owns worker threads and "
            "native contexts; create one in each process from the model path"
        )

    def __repr__(self) -> str:
        state = "closed" if self._engine is None else self._engine.state.value
        return f"<InferenceSession backend={self._backend.name!r} {state}>"

    # -- internals -------------------------------------------------------------------------

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise SessionClosedError("the session was not created")
        return self._engine

    def _check_open(self) -> Engine:
        engine = self._require_engine()
        engine.check_open()
        return engine

    def _output_indices(self, output_names: Any) -> tuple[int, ...]:
        """Indices of the requested outputs; falsy names mean all (precomputed: the hot path)."""
        return resolve_outputs(output_names, self._outputs) if output_names else self._all_outputs

    def _arrays(self, input_feed: Any) -> list[np.ndarray]:
        """The feed as checked arrays in input order: the generic checks, then the backend's
        own (a dynamic RKNN model's allowed shapes), all before anything is queued."""
        return self._backend.check_feed(normalize_feed(input_feed, self._inputs))

    def _prepare_async(
        self, api: str, output_names: Any, input_feed: Any, run_options: Any
    ) -> _Job:
        _reject_dispatch_batch(api, run_options)
        if isinstance(input_feed, SessionIOBinding):
            if output_names:
                raise ValueError(
                    f"{api}: output_names must be None with an IOBinding; the run delivers its "
                    "bound outputs"
                )
            return _Job(api, input_feed, (), self._zero_copy)
        indices = self._output_indices(output_names)
        arrays = self._arrays(input_feed)
        return _Job(api, copy_for_async(arrays), indices)

    def _run_batch(self, indices: tuple[int, ...], input_feed: Any) -> list[np.ndarray]:
        """Dispatch batch: one task per sample over all workers, outputs joined in order."""
        engine = self._require_engine()
        arrays = normalize_feed(input_feed, self._batch_inputs)
        samples = [
            self._backend.check_feed(sample) for sample in split_batch(arrays, self._inputs)
        ]  # every sample is checked before the first is queued
        futures = [engine.submit(sample, indices) for sample in samples]
        try:
            per_sample = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)  # running samples still read the caller's arrays
            raise
        return [_join([outputs[k] for outputs in per_sample]) for k in range(len(indices))]


def _join(parts: list[np.ndarray]) -> np.ndarray:
    if parts[0].ndim == 0:
        return np.stack(parts)
    return np.concatenate(parts, axis=0)


def _dispatch_batch(run_options: Any) -> bool:
    value = run_option(run_options, DISPATCH_BATCH)
    return False if value is None else parse_bool(DISPATCH_BATCH, value)


def _reject_dispatch_batch(api: str, run_options: Any) -> None:
    if run_options is not None and _dispatch_batch(run_options):
        raise ValueError(f"{api} does not support {DISPATCH_BATCH}=True; use run()")


@dataclasses.dataclass(frozen=True)
class _Job:
    """One queued inference: copied input arrays, or an IOBinding that every submit attempt
    claims anew (so an attempt that queues nothing leaves the binding free)."""

    api: str
    inputs: Any
    indices: tuple[int, ...]
    memory: Optional[SessionMemory] = None  # set when ``inputs`` is an IOBinding

    def submit(
        self, engine: Engine, blocking: bool = True, waiter: Optional[SpaceWaiter] = None
    ) -> Future:
        if self.memory is None:
            return engine.submit(self.inputs, self.indices, blocking=blocking, waiter=waiter)
        return launch(
            self.memory,
            self.inputs,
            self.api,
            lambda flight: engine.submit(
                flight, (), blocking=blocking, method=_RUN_BINDING, waiter=waiter
            ),
        )

    def submit_callback(self, engine: Engine, callback: Callable[..., Any], user_data: Any) -> None:
        if self.memory is None:
            engine.submit_callback(self.inputs, self.indices, callback, user_data)
            return
        launch(
            self.memory,
            self.inputs,
            self.api,
            lambda flight: engine.submit_callback(
                flight, (), callback, user_data, method=_RUN_BINDING
            ),
        )


def _start_engine(backend: Any, options: ProviderOptions) -> Engine:
    """Lay out the slots, open one runner per slot and start the engine; on failure release
    whatever was opened, in reverse order."""
    runners = []
    try:
        if options.schedule:
            backend.check_cores(sorted(set(options.schedule)))
        slots = plan_slots(options, backend.default_cores())
        for slot in slots:
            runners.append(backend.open_runner(slot))
        distinct = {slot.core for slot in slots}
        return Engine(
            list(zip(slots, runners)),
            EngineConfig(
                max_queue_size=options.max_queue_size,
                submit_timeout_ms=options.submit_timeout_ms,
                sequential_callbacks=options.sequential_callbacks,
                enable_pacing=options.enable_pacing,
                routes=task_routes(options),
                pacing_cores=max(1, len(distinct - {None})),
            ),
            retain=(backend,),
        )
    except BaseException:
        for runner in reversed(runners):
            runner.close()
        backend.close()
        raise
