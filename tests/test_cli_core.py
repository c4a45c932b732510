"""The CLI's pure parts: statistics, spec parsing, input synthesis, the loop and its drivers."""

from __future__ import annotations

import io
import sys
import threading
import time

import numpy as np
import pytest

from ez_rknn_async import InferenceError, NodeArg
from ez_rknn_async.cli.bench import (
    AsyncDriver,
    Budget,
    PipelineDriver,
    RunDriver,
    measure,
    parse_compare,
    parse_modes,
)
from ez_rknn_async.cli.errors import ExitCode, UsageError, explain
from ez_rknn_async.cli.models import build_feed, parse_input_spec, parse_shape_spec
from ez_rknn_async.cli.report import Output, TqdmProgress, format_table
from ez_rknn_async.cli.stats import (
    autorange,
    percentile,
    pick_unit,
    summarize,
    unstable,
    window_rates,
)

# --- stats -------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy_linear(q, n):
    values = sorted(np.random.default_rng(n).random(n).tolist())
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_summarize_known_values():
    stats = summarize([0.004, 0.001, 0.003, 0.002])
    assert (stats.min, stats.max, stats.median) == (0.001, 0.004, 0.0025)
    assert stats.avg == pytest.approx(0.0025)
    assert stats.scaled(1e3)["max"] == pytest.approx(4.0)


def test_window_rates_of_a_steady_stream():
    done = [i / 100 for i in range(201)]  # 100 frames/s
    rates = window_rates(done, windows=10)
    assert len(rates) == 10
    assert rates == pytest.approx([100.0] * 10)
    assert window_rates([0.0, 1.0]) == []


def test_unstable_is_timeits_four_times_rule():
    assert unstable([10.0, 41.0])
    assert not unstable([10.0, 39.0])
    assert not unstable([])


def test_autorange_grows_batches_like_timeit():
    calls = []

    def run_batch(frames):
        calls.append(frames)
        return frames * 0.03

    assert autorange(run_batch, min_time=0.2) == (10, pytest.approx(0.3))
    assert calls == [1, 2, 5, 10]


@pytest.mark.parametrize(
    "seconds, unit", [(2.0, "s"), (0.05, "ms"), (0.0005, "us"), (5e-8, "ns"), (1e-12, "ns")]
)
def test_pick_unit(seconds, unit):
    assert pick_unit(seconds)[0] == unit


def test_budget_reached_and_split():
    budget = Budget(frames=10, seconds=2.0)
    assert budget.reached(10, 0.1) and budget.reached(3, 2.0) and not budget.reached(9, 1.9)
    assert budget.split(3) == Budget(frames=4, seconds=pytest.approx(2 / 3))
    with pytest.raises(ValueError):
        Budget()


# --- specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, name, dims",
    [
        ("images=1x3x640x640", "images", (1, 3, 640, 640)),
        ("images=1,3,640,640", "images", (1, 3, 640, 640)),
        ("x=[2, 4]", "x", (2, 4)),
        ("1x3x32x32", None, (1, 3, 32, 32)),
    ],
)
def test_parse_shape_spec(text, name, dims):
    spec = parse_shape_spec(text)
    assert (spec.name, spec.dims) == (name, dims)


@pytest.mark.parametrize("text", ["images=1x3xfoo", "images=", "images=1x0x3", "=1x3", "axb"])
def test_bad_shape_spec_is_a_usage_error_with_an_example(text):
    with pytest.raises(UsageError) as info:
        parse_shape_spec(text)
    assert "--shape" in str(info.value)
    assert explain(info.value)[0] is ExitCode.USAGE


def test_parse_input_spec():
    assert parse_input_spec("a=frame.npy").name == "a"
    assert parse_input_spec("frame.npy").name is None
    with pytest.raises(UsageError, match="NAME=FILE"):
        parse_input_spec("a=")


def test_parse_modes_and_compare():
    assert parse_modes("all") == ["run", "async", "pipeline"]
    assert parse_modes("pipeline,run,run") == ["pipeline", "run"]
    assert parse_compare("none") == []
    assert parse_compare("ort,openvino") == ["ort", "openvino"]
    with pytest.raises(UsageError, match="unknown --mode 'fast'"):
        parse_modes("run,fast")
    with pytest.raises(UsageError, match="unknown --compare 'tensorrt'"):
        parse_compare("tensorrt")


# --- random inputs -----------------------------------------------------------------------------


def test_build_feed_dtypes_shapes_and_dynamic_batch_note():
    inputs = [
        NodeArg("img", ["N", 3, 8, 8], "tensor(uint8)"),
        NodeArg("ids", [1, 5], "tensor(int64)"),
        NodeArg("mask", [1, 5], "tensor(bool)"),
        NodeArg("h", [2], "tensor(float16)"),
    ]
    feed = build_feed(inputs)
    arrays = feed.arrays
    assert arrays["img"].shape == (1, 3, 8, 8) and arrays["img"].dtype == np.uint8
    assert arrays["img"].max() > 200  # full byte range, not 0..1
    assert arrays["ids"].dtype == np.int64 and 0 <= arrays["ids"].min() <= arrays["ids"].max() < 10
    assert arrays["mask"].dtype == np.bool_
    assert arrays["h"].dtype == np.float16
    assert any("dynamic batch" in note for note in feed.notes)
    np.testing.assert_array_equal(build_feed(inputs).arrays["img"], arrays["img"])  # seeded


def test_build_feed_needs_a_shape_for_dynamic_spatial_dims():
    inputs = [NodeArg("images", ["batch", 3, "height", "width"], "tensor(float)")]
    with pytest.raises(UsageError, match="dynamic dims") as info:
        build_feed(inputs)
    assert "--shape images=1x3xNxN" in info.value.hint
    feed = build_feed(inputs, [parse_shape_spec("images=1x3x32x48")])
    assert feed.arrays["images"].shape == (1, 3, 32, 48)


def test_build_feed_checks_names_and_fixed_dims(tmp_path):
    inputs = [NodeArg("a", [1, 4], "tensor(float)"), NodeArg("b", [1, 4], "tensor(float)")]
    with pytest.raises(UsageError, match="no input named 'c'") as info:
        build_feed(inputs, [parse_shape_spec("c=1x4")])
    assert "a, b" in info.value.hint
    with pytest.raises(UsageError, match="dim 1 is fixed to 4"):
        build_feed(inputs, [parse_shape_spec("a=1x5")])
    with pytest.raises(UsageError, match="needs an input name"):
        build_feed(inputs, [parse_shape_spec("1x4")])
    path = tmp_path / "a.npy"
    np.save(path, np.full((1, 4), 7, np.float32))
    feed = build_feed(inputs, files=[parse_input_spec(f"a={path}")])
    assert feed.arrays["a"].tolist() == [[7, 7, 7, 7]]
    with pytest.raises(FileNotFoundError, match="input file not found"):
        build_feed(inputs, files=[parse_input_spec(f"a={tmp_path / 'missing.npy'}")])


def test_format_table_aligns_columns():
    text = format_table(["mode", "fps"], [["run", "9.5"], ["pipeline", "123.0"]], [True, False])
    lines = text.splitlines()
    assert lines[0] == "mode        fps"
    assert lines[2] == "run         9.5"
    assert lines[3] == "pipeline  123.0"


# --- the loop and its drivers, on a fake session ------------------------------------------------


class SlowSession:
    """Takes ``delay`` per frame on a background thread; speaks our (and onnxruntime's) API."""

    def __init__(self, delay: float = 0.002, fail_at: int = -1) -> None:
        self.delay, self.fail_at, self.calls = delay, fail_at, 0
        self._pending: list = []

    def run(self, names, feed):
        time.sleep(self.delay)
        return [feed["x"]]

    def run_async(self, names, feed, callback, user_data):
        self.calls += 1
        err = "boom" if self.calls == self.fail_at else ""

        def work():
            time.sleep(self.delay)
            callback(None if err else [feed["x"]], user_data, err)

        threading.Thread(target=work).start()

    def run_pipeline(self, feed, depth):
        self._pending.append(self.run(None, feed))
        return self._pending.pop(0) if len(self._pending) > depth else None

    def drain_pipeline(self):
        drained, self._pending = self._pending, []
        return drained


FEED = {"x": np.zeros(2)}


@pytest.mark.parametrize(
    "driver",
    [
        RunDriver(SlowSession(), FEED),
        AsyncDriver(SlowSession(), FEED, depth=3),
        PipelineDriver(SlowSession(), FEED, depth=3),
    ],
    ids=["run", "async", "pipeline"],
)
def test_measure_counts_every_frame_and_times_it(driver):
    timeline = measure(driver, Budget(frames=12))
    assert timeline.count == 12
    assert all(latency >= 0.0015 for latency in timeline.latencies)
    assert timeline.duration >= 0.0015 * 12 / 3


def test_pipeline_latency_includes_the_frames_it_waits_behind():
    timeline = measure(PipelineDriver(SlowSession(0.002), FEED, depth=3), Budget(frames=10))
    assert min(timeline.latencies[:7]) >= 3 * 0.0015


def test_async_driver_raises_the_callback_error():
    with pytest.raises(InferenceError, match="run_async failed: boom"):
        measure(AsyncDriver(SlowSession(fail_at=2), FEED, depth=2), Budget(frames=4))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_in_human_mode():
    assert isinstance(Output("human", err=_Terminal()).progress(), TqdmProgress)
    assert Output("human", err=io.StringIO()).progress() is None  # piped: CI logs, make demo
    assert Output("json", err=_Terminal()).progress() is None


def test_missing_tqdm_is_a_note_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    err = _Terminal()
    assert Output("human", err=err).progress() is None
    assert "pip install 'ez-rknn-async[cli]'" in err.getvalue()
