"""The original C++ library on our emulator: a real oracle for the emulator and for our backend.

The original (PyPI ``ztu-somemodelruntime-ez-rknn-async``, AGPL, installed by the ``test`` extra
where it publishes wheels) was developed on boards and loads librknnrt from
``ZTU_RKNPU2_RUNTIME_LIBRARY``. Run on the emulated librknnrt, every calling mode of it must break
no rule of the emulator and return what ours returns (both bit for bit equal to the emulated
network). Only its behaviour is observed (results, the emulator's call counters and violations).
Skipped where the wheel is not installed.
"""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, make_provider_options

from rknn_emu import EmuModel, EmuTensor, emulator_build, reference

pytest_plugins = ("rknn_fixtures",)

MODELS = {
    "int8": EmuModel(
        inputs=[EmuTensor("image", "int8", (1, 4, 4, 3), zp=1, scale=0.05)],
        outputs=[
            EmuTensor("logits", "int8", (1, 6), zp=-2, scale=0.1),
            EmuTensor("mask", "int8", (1, 2, 4, 4), scale=0.1),
        ],
        gain=0.5,
    ),
    "float": EmuModel(
        inputs=[
            EmuTensor("image", "float16", (1, 4, 4, 3)),
            EmuTensor("bias", "float16", (1, 5)),
        ],
        outputs=[EmuTensor("y", "float16", (1, 3, 4, 4)), EmuTensor("z", "float32", (1, 7))],
        gain=0.25,
    ),
}
OPTIONS = {
    "default": {},
    "schedule 3 cores": {"schedule": [0, 1, 2]},
    "tp_mode 0,1,2": {"tp_mode": "0,1,2"},
    "tp_mode all, 2 threads": {"tp_mode": "all", "threads_per_core": 2},
}


@pytest.fixture(scope="module")
def ztu(emulator_library):
    """The original's module, loading the emulated librknnrt (the path must be set before the
    import; the same path gives the same loaded library as the control API's)."""
    os.environ["ZTU_RKNPU2_RUNTIME_LIBRARY"] = str(emulator_library)
    return pytest.importorskip("ztu_somemodelruntime_ez_rknn_async")


@pytest.fixture(scope="module")
def emulator_library():
    return emulator_build.build().library


def feeds(model: EmuModel, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` feeds in NCHW for 4-D inputs (both libraries' default layout)."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        feed = {}
        for tensor in model.inputs:
            dims = tensor.dims
            shape = (dims[0], dims[3], dims[1], dims[2]) if len(dims) == 4 else dims
            feed[tensor.name] = rng.uniform(-3, 3, shape).astype(np.float32)
        result.append(feed)
    return result


def want(model: EmuModel, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return reference(model, [feed[t.name] for t in model.inputs])


def assert_same(got, expected) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.fixture(params=list(MODELS), ids=list(MODELS))
def model(request, tmp_path):
    model = MODELS[request.param]
    return model, str(model.write(tmp_path / f"{request.param}.rknn"))


@pytest.fixture(params=list(OPTIONS), ids=list(OPTIONS))
def sessions(request, npu, ztu, model):
    """(model, original's session, ours) on one model file, with one option set; the original's
    session is destroyed before the npu fixture counts contexts and violations."""
    emu_model, path = model
    npu.use("rk3588", compute_us=200)
    npu.tolerate_early_destroys = True  # the original destroys context 0 before its dups
    options = make_provider_options(**OPTIONS[request.param])
    ours = InferenceSession(path, provider_options=options)
    # A list, emptied at teardown: pytest keeps the fixture's value until teardown ends, and the
    # original's session (no close()) is destroyed only when its last reference goes.
    trio = [emu_model, ztu.InferenceSession(path, provider_options=options), ours]
    try:
        yield trio
    finally:
        ours.close()
        trio.clear()
        gc.collect()
    assert npu.live_contexts == 0


def test_run(npu, sessions):
    emu_model, theirs, ours = sessions
    before = npu.calls("rknn_run")
    for feed in feeds(emu_model, 4):
        expected = want(emu_model, feed)
        assert_same(theirs.run(None, feed), expected)
        assert_same(ours.run(None, feed), expected)
    assert npu.calls("rknn_run") - before == 8
    # A static model: neither library tells the runtime about input shapes.
    assert npu.calls("rknn_set_input_shapes") == 0
    assert npu.calls("rknn_outputs_get") == npu.calls("rknn_outputs_release")


def collect_async(session, inputs) -> list:
    """run_async of every feed; the results by index (callbacks synchronised by a semaphore)."""
    results: dict[int, tuple] = {}
    done = threading.Semaphore(0)

    def callback(outputs, index, err):
        results[index] = (outputs, err)
        done.release()

    for index, feed in enumerate(inputs):
        session.run_async(None, feed, callback, index)
    for _ in inputs:
        assert done.acquire(timeout=20)
    return [results[index] for index in range(len(inputs))]


def test_run_async(sessions):
    emu_model, theirs, ours = sessions
    inputs = feeds(emu_model, 12, seed=1)
    for session in (theirs, ours):
        for feed, (outputs, err) in zip(inputs, collect_async(session, inputs)):
            assert err == ""
            assert_same(outputs, want(emu_model, feed))


def test_run_pipeline(sessions):
    emu_model, theirs, ours = sessions
    inputs = feeds(emu_model, 8, seed=2)
    flush = feeds(emu_model, 3, seed=3)  # the original has no drain: dummy frames push out the rest
    for session in (theirs, ours):
        returned = [session.run_pipeline(feed, depth=3) for feed in inputs + flush]
        assert returned[:3] == [None, None, None]
        for outputs, feed in zip(returned[3:], inputs):
            assert_same(outputs, want(emu_model, feed))


def test_schedule_spreads_over_the_three_cores_in_both(npu, ztu, model):
    """``schedule=[0, 1, 2]``: both libraries bind one context per core and use every core."""
    emu_model, path = model
    npu.use("rk3588", compute_us=200)
    npu.tolerate_early_destroys = True
    options = make_provider_options(schedule=[0, 1, 2])
    inputs = feeds(emu_model, 9, seed=4)
    theirs = ztu.InferenceSession(path, provider_options=options)
    try:
        for mask in (1, 2, 4):
            assert npu.contexts_with_mask(mask) == 1
        collect_async(theirs, inputs)
        assert [npu.core_runs(core) for core in range(3)] == [3, 3, 3]
    finally:
        del theirs
        gc.collect()
    with InferenceSession(path, provider_options=options) as ours:
        assert [npu.contexts_with_mask(mask) for mask in (1, 2, 4)] == [1, 1, 1]
        npu.block_runs(3)  # ours gives a task to any idle worker: hold three runs at once
        held = [ours.submit(None, feed) for feed in inputs[:3]]
        try:
            assert npu.wait_blocked(3, timeout=10) == 3
        finally:
            npu.release_runs()
        for future, feed in zip(held, inputs):
            assert_same(future.result(timeout=10), want(emu_model, feed))
        assert [npu.core_runs(core) for core in range(3)] == [4, 4, 4]
        for feed, (outputs, err) in zip(inputs, collect_async(ours, inputs)):
            assert err == ""
            assert_same(outputs, want(emu_model, feed))


def zero_copy_feed(session, seed: int) -> dict[str, np.ndarray]:
    """Values in each input's zero-copy type and logical shape (the model's own type)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        dtype = {"tensor(float16)": np.float16, "tensor(int8)": np.int8}[arg.type]
        if dtype is np.int8:
            feed[arg.name] = rng.integers(-128, 128, arg.shape, dtype=np.int8)
        else:
            feed[arg.name] = rng.uniform(-4, 4, arg.shape).astype(dtype)
    return feed


def test_zero_copy_binding_in_both(npu, ztu, model):
    """run_with_iobinding with every input and output bound (native layouts, tensor mems): the
    original and ours break no rule and return the same raw outputs."""
    emu_model, path = model
    npu.use("rk3588", compute_us=200)
    results = {}
    for name, factory in (("ztu", ztu.InferenceSession), ("ours", InferenceSession)):
        box = [factory(path)]
        binding = box[0].io_binding()
        for key, value in zero_copy_feed(box[0], seed=5).items():
            binding.bind_cpu_input(key, value)
        for arg in box[0].get_outputs():
            binding.bind_output(arg.name)
        box[0].run_with_iobinding(binding)
        results[name] = binding.copy_outputs_to_cpu()
        del binding
        if name == "ours":
            box[0].close()
        box.clear()
        gc.collect()
    assert npu.calls("rknn_set_io_mem") == 2 * (len(emu_model.inputs) + len(emu_model.outputs))
    for theirs, ours in zip(results["ztu"], results["ours"]):
        assert theirs.dtype == ours.dtype and theirs.shape == ours.shape
        np.testing.assert_array_equal(theirs, ours)
    assert npu.live_mems == 0 and npu.live_contexts == 0
