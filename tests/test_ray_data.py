"""``ez_rknn_async.ray.Predictor``: Ray Data batch inference over boards.

In this process (the ``npu`` emulator): how rows map to the model's tensors, pass-through
columns, both batch formats, errors, teardown. On the shared cluster of emulated boards
(``ray_fixtures``): 600 frames through ``map_batches`` come back once each, in order and right,
spread over both boards; a bad column fails the dataset with our message; a board killed while
it holds batches loses none of them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from rknn_emu import EmuModel, EmuTensor, reference

ray = pytest.importorskip("ray")
pd = pytest.importorskip("pandas")
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from ez_rknn_async.ray import Predictor  # noqa: E402

pytest_plugins = ("rknn_fixtures", "ray_fixtures")
# Ray 2.60's DataContext() sets its own deprecated fields (use_push_based_shuffle,
# use_polars...) in __init__, so the first DataContext.get_current() of a process warns from
# ray.data.context whatever the caller does. Only that module's warnings are ignored.
pytestmark = pytest.mark.filterwarnings(r"ignore:::ray\.data\.context")

#: A detector-like model: a quantized image in, scores and a mask out.
MODEL = EmuModel(
    inputs=[EmuTensor("image", "uint8", (1, 4, 4, 3), zp=128, scale=0.025)],
    outputs=[EmuTensor("logits", "float32", (1, 6)), EmuTensor("mask", "int8", (1, 2, 4, 4))],
    gain=0.25,
)
#: A second input without a batch axis: each row holds it whole.
TWO_INPUTS = EmuModel(
    inputs=[EmuTensor("image", "float32", (1, 4, 4, 3)), EmuTensor("scale", "float32", (2,))],
    outputs=[EmuTensor("score", "float32", (1,))],
)
FRAMES = 600


def frames(count, seed=0):
    return np.random.default_rng(seed).uniform(-3, 3, (count, 3, 4, 4)).astype(np.float32)


def expected(model, *samples):
    """The reference outputs of one row, without their batch axis of 1."""
    feeds = [s[None] if t.dims[0] == 1 else s for t, s in zip(model.inputs, samples)]
    return [out[0] if out.shape[0] == 1 else out for out in reference(model, feeds)]


@pytest.fixture
def model_path(tmp_path):
    return str(MODEL.write(tmp_path / "model.rknn"))


@pytest.fixture
def predictor(npu, model_path):
    npu.use("rk3588", compute_us=200)
    p = Predictor(model=model_path)
    yield p
    p.close()


# -- in this process ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_batch_axis", [False, True], ids=["samples", "batch axis"])
def test_rows_are_samples_with_or_without_the_batch_axis(predictor, with_batch_axis):
    images = frames(7)
    column = images[:, None] if with_batch_axis else images
    ids = np.arange(100, 107)
    out = predictor({"id": ids, "image": column, "path": np.array([f"f{i}" for i in ids])})
    assert list(out) == ["id", "path", "logits", "mask"]  # inputs dropped, the rest passed
    np.testing.assert_array_equal(out["id"], ids)
    assert out["logits"].shape == (7, 6) and out["mask"].shape == (7, 2, 4, 4)
    for i, image in enumerate(images):
        logits, mask = expected(MODEL, image)
        np.testing.assert_array_equal(out["logits"][i], logits)
        np.testing.assert_array_equal(out["mask"][i], mask)


def test_keep_inputs_and_output_names(npu, model_path):
    npu.use("rk3588", compute_us=200)
    images = frames(3)
    p = Predictor(model=model_path, output_names=["mask"], keep_inputs=True, schedule=[0, 1])
    try:
        out = p({"image": images})
    finally:
        p.close()
    assert list(out) == ["image", "mask"]
    assert out["image"] is images
    np.testing.assert_array_equal(out["mask"][2], expected(MODEL, images[2])[1])


def test_an_input_without_batch_axis_is_held_whole(npu, tmp_path):
    npu.use("rk3588", compute_us=200)
    images, scales = frames(4), np.arange(8, dtype=np.float32).reshape(4, 2)
    p = Predictor(model=str(TWO_INPUTS.write(tmp_path / "two.rknn")))
    try:
        out = p({"image": images, "scale": scales})
        assert out["score"].shape == (4,)  # an output [1]: one value per row
        for i in range(4):
            np.testing.assert_array_equal(
                out["score"][i], expected(TWO_INPUTS, images[i], scales[i])[0]
            )
        with pytest.raises(ValueError) as info:
            p({"image": images, "scale": scales[:, None]})
        assert (
            "column 'scale' (model input 'scale', [2] tensor(float)): a row must hold [2], "
            "got a row of [1, 2]" in str(info.value)
        )
    finally:
        p.close()


def test_pandas_batches(predictor):
    images = frames(5)
    batch = pd.DataFrame({"id": np.arange(5), "image": list(images)})
    out = predictor(batch)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["id", "logits", "mask"]
    np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(5))
    for i in range(5):
        logits, mask = expected(MODEL, images[i])
        np.testing.assert_array_equal(out["logits"].iloc[i], logits)
        np.testing.assert_array_equal(out["mask"].iloc[i], mask)


def test_rows_of_several_shapes_in_an_object_column(predictor):
    images = frames(3)
    column = np.empty(3, dtype=object)
    column[0], column[1], column[2] = images[0], images[1][None], images[2]
    out = predictor({"image": column})
    assert out["logits"].shape == (3, 6)  # one output form whatever the input rows were
    for i in range(3):
        np.testing.assert_array_equal(out["logits"][i], expected(MODEL, images[i])[0])


@pytest.mark.parametrize(
    "image",
    [np.zeros((0, 3, 4, 4), np.float32), np.zeros(0), [], np.empty(0, dtype=object)],
    ids=["tensor", "no row shape", "list", "object"],
)
def test_empty_batch(predictor, image):
    """An empty block (after a filter, say) gives an empty result, whatever the empty column
    looks like: a pandas or Arrow column without rows has lost its row shape."""
    out = predictor({"id": np.arange(0), "image": image})
    assert out["logits"].shape == (0, 6) and out["mask"].shape == (0, 2, 4, 4)
    frame = predictor(pd.DataFrame({"id": np.arange(0), "image": list(image)}))
    assert list(frame.columns) == ["id", "logits", "mask"] and len(frame) == 0


BAD_BATCHES = {
    "missing column": (
        {"id": np.arange(2), "img": frames(2)},
        ValueError,
        "Predictor(model.rknn): the batch has no column for model input(s) ['image']; its "
        "columns are ['id', 'img']; the model's inputs are ['image']",
    ),
    "row shape": (
        {"image": np.zeros((2, 3, 5, 4), np.float32)},
        ValueError,
        "column 'image' (model input 'image', [1, 3, 4, 4] tensor(uint8)): a row must hold one "
        "sample, [3, 4, 4] (or [1, 3, 4, 4]), got a row of [3, 5, 4]",
    ),
    "row of an object column": (
        {"image": np.array([np.zeros((3, 4, 4), np.float32), np.zeros(5)], dtype=object)},
        ValueError,
        "row 1 of column 'image' (model input 'image'",
    ),
    "ragged list": (
        {"image": [np.zeros((3, 4, 4), np.float32), np.zeros(5, np.float32)]},
        ValueError,
        "column 'image': rows of several shapes must come as an object array",
    ),
    "dtype": (
        {"image": frames(2).astype(np.float64)},
        TypeError,
        "Predictor(model.rknn): row 0 of the batch: input 'image': expected dtype",
    ),
    "output overwrites a column": (
        {"image": frames(2), "mask": np.arange(2)},
        ValueError,
        "model output(s) ['mask'] would overwrite the batch's column(s) of the same name",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_batches_name_what_is_wrong(predictor, case):
    batch, kind, message = BAD_BATCHES[case]
    with pytest.raises(kind) as info:
        predictor(batch)
    assert message in str(info.value)
    # the session goes on
    out = predictor({"image": frames(1)})
    np.testing.assert_array_equal(out["logits"][0], expected(MODEL, frames(1)[0])[0])


def test_bad_batch_format(predictor):
    pa = pytest.importorskip("pyarrow")
    with pytest.raises(TypeError, match="batch_format='numpy'.*or 'pandas', got a pyarrow"):
        predictor(pa.table({"image": [1.0]}))


def test_bad_constructor_arguments(npu, model_path):
    with pytest.raises(ValueError, match="quue_size"):
        Predictor(model=model_path, max_quue_size=4)
    with pytest.raises(ValueError, match=r"unknown output name\(s\) \['score'\]"):
        Predictor(model=model_path, output_names=["score"])
    with pytest.raises(TypeError, match="not a string"):
        Predictor(model=model_path, output_names="mask")
    assert npu.live_contexts == 0


def test_close_and_del_release_the_session(npu, model_path):
    p = Predictor(model=model_path)
    assert npu.live_contexts > 0
    p.close()
    p.close()
    assert npu.live_contexts == 0
    with pytest.raises(RuntimeError, match="closed"):
        p({"image": frames(1)})
    q = Predictor(model=model_path)
    assert npu.live_contexts > 0
    del q  # what Ray Data does when the actor pool shuts down
    gc.collect()
    assert npu.live_contexts == 0


# -- on the cluster ----------------------------------------------------------------------------


@pytest.fixture
def data_context(monkeypatch):
    """Row order across batches, and no progress bars, for this test only. No usage
    telemetry either: Ray Data would start a driver thread that polls a Prometheus on
    localhost:9090 every few seconds for the rest of the session."""
    monkeypatch.setenv("RAY_DATA_USAGE_DISABLED", "1")
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    yield ctx
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
    pollers = [t for t in threading.enumerate() if t.name == "data-usage-metrics-poller"]
    assert not pollers


@pytest.fixture
def boards(ray_boards):
    """The shared cluster; afterwards, every board's ``rknpu`` is free again (the dataset's
    actors are gone), so the next tests (Serve's too) find the cluster as it was."""
    yield ray_boards
    ray_boards.wait_free(30, "the Predictor actors still hold the boards")


@pytest.fixture(scope="module")
def shared_model(tmp_path_factory):
    return str(MODEL.write(tmp_path_factory.mktemp("ray_data") / "model.rknn"))


def dataset(images, blocks=20):
    items = [{"id": i, "image": image} for i, image in enumerate(images)]
    return ray.data.from_items(items, override_num_blocks=blocks)


def tagging_predictor(gate=None, gate_from=None):
    """A Predictor that adds the node each row ran on (Ray's own node id of the actor), and
    with a ``gate`` holds every batch from id ``gate_from`` on until the gate opens. Defined
    here, so Ray pickles it by value (workers cannot import this test module)."""

    class Tagged(Predictor):
        def __call__(self, batch):
            node = ray.get_runtime_context().get_node_id()
            if gate is not None and batch["id"][0] >= gate_from:
                ray.get(gate.wait.remote(node), timeout=120)
            out = super().__call__(batch)
            out["node"] = np.full(len(batch["id"]), node)
            return out

    return Tagged


def run(ds, model, predictor=Predictor, concurrency=2, batch_size=30):
    return ds.map_batches(
        predictor,
        fn_constructor_kwargs={"model": model},
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        resources={"rknpu": 1},
        batch_size=batch_size,
    )


def check_every_frame(rows, images):
    """Each frame once, in order, each output right."""
    np.testing.assert_array_equal(rows["id"], np.arange(len(images)))
    for i, image in enumerate(images):
        logits, mask = expected(MODEL, image)
        np.testing.assert_array_equal(rows["logits"][i], logits)
        np.testing.assert_array_equal(rows["mask"][i], mask)


def test_map_batches_600_frames_in_order_over_both_boards(boards, data_context, shared_model):
    images = frames(FRAMES, seed=1)
    rows = run(dataset(images), shared_model, tagging_predictor()).take_batch(FRAMES + 1)
    check_every_frame(rows, images)
    per_node = {node: int(np.sum(rows["node"] == node)) for node in set(rows["node"])}
    assert set(per_node) == set(boards.node_ids()), per_node
    assert all(count >= 30 for count in per_node.values()), per_node  # a batch or more each


#: A user's job whose frames are float64: it prints the chain of the exception Ray Data raises.
BAD_JOB = """
import json, sys
import numpy as np, ray
from ez_rknn_async.ray import Predictor

ray.init(address=sys.argv[1], log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
frames = np.zeros((60, 3, 4, 4))
ds = ray.data.from_items([{"id": i, "image": f} for i, f in enumerate(frames)])
try:
    ds.map_batches(Predictor, fn_constructor_kwargs={"model": sys.argv[2]},
                   compute=ray.data.ActorPoolStrategy(size=1), resources={"rknpu": 1},
                   batch_size=30).materialize()
except Exception as exc:
    chain = []
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    print(json.dumps(chain))
"""


def test_a_bad_column_fails_the_dataset_with_our_message(boards, shared_model):
    """In a job of its own, as a user runs it: the actor of a failed dataset is released when
    the job's driver drops the executor, which a test's captured traceback would delay."""
    job = subprocess.run(
        [sys.executable, "-c", BAD_JOB, boards.address, shared_model],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    chain = json.loads(job.stdout.strip().splitlines()[-1])
    wanted = "Predictor(model.rknn): row 0 of the batch: input 'image': expected dtype"
    assert any(wanted in text for text in chain), chain


def test_a_board_killed_mid_stream_loses_no_frame(boards, data_context, shared_model):
    """Both actors hold a batch (stopped at a gate) when one board dies: its actor restarts on
    the board that replaces it and the batch runs again there; every frame comes back once."""

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self):
            self.opened = asyncio.Event()
            self.arrived = asyncio.Condition()
            self.nodes = set()

        async def wait(self, node):
            async with self.arrived:
                self.nodes.add(node)
                self.arrived.notify_all()
            await self.opened.wait()

        async def nodes_waiting(self, count):
            async with self.arrived:
                await self.arrived.wait_for(lambda: len(self.nodes) >= count)
                return sorted(self.nodes)

        def open(self):
            self.opened.set()

    head = boards.head_node_id
    gate = Gate.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)
    ).remote()
    images = frames(FRAMES, seed=2)
    ds = run(dataset(images), shared_model, tagging_predictor(gate, gate_from=60))
    batches = iter(ds.iter_batches(batch_size=None))
    first = next(batches)  # the stream runs: the first frames are back
    waiting = ray.get(gate.nodes_waiting.remote(2), timeout=120)
    assert set(waiting) == set(boards.node_ids())
    victim = next(node for node in boards.nodes if node.node_id == waiting[0])
    fresh = boards.replace(victim)
    ray.get(gate.open.remote(), timeout=30)
    rest = list(batches)
    rows = {
        key: np.concatenate([first[key]] + [batch[key] for batch in rest])
        for key in ("id", "logits", "mask", "node")
    }
    check_every_frame(rows, images)
    assert fresh.node_id in set(rows["node"])  # the held batches ran on the new board
