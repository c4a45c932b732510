"""The RKNPU3 backend on the emulated librknn3_api (both ABI versions, 1 and 2 devices): every
calling mode bit-exact against the reference, slots over cores and devices, the .weight file,
options and errors. The ``npu3`` fixture fails a test on any rule violation or leak."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ez_rknn_async import (
    InferenceSession,
    RKNNError,
    RunTimeoutError,
    make_provider_options,
    make_rknpu3_provider_options,
)
from ez_rknn_async.backends import ModelSource, choose_backend
from ez_rknn_async.options import parse_provider_options

from rknn3_emu import Model3, Tensor3

pytest_plugins = ("rknn3_fixtures",)

MODEL = Model3(
    inputs=[Tensor3("image", "int8", (1, 3, 4, 5), -4, 0.03), Tensor3("extra", "float32", (2, 7))],
    outputs=[
        Tensor3("feature", "float32", (1, 6, 4, 5)),
        Tensor3("scores", "int8", (3, 5), 3, 0.07),
        Tensor3("half", "float16", (1, 20, 2, 2)),
    ],
    core_num=2,
    gain=0.75,
    custom_string='{"labels": ["cat"]}',
)
DEVICE_IDS = ["0000:01:00.0", "0000:02:00.0"]


def assert_exact(outputs, feeds):
    expected = MODEL.reference(feeds)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def options(**rknpu3):
    return {**make_provider_options(), **make_rknpu3_provider_options(**rknpu3)}


@pytest.fixture(params=[1, 2], ids=["1dev", "2dev"])
def devices(request, npu3):
    npu3.use(devices=request.param)
    return request.param


def test_every_calling_mode_is_bit_exact(tmp_path, npu3, devices):
    path = MODEL.write(tmp_path)
    feeds = [MODEL.feeds(seed) for seed in range(6)]
    with InferenceSession(str(path)) as sess:
        assert sess.get_providers() == ["RKNPU3ExecutionProvider"]
        assert sess.backend_name == "rknn3"
        assert len(sess.worker_slots) == 4 * devices  # 8 cores / 2-core model per device
        assert npu3.contexts_on(0) == 4 and npu3.contexts_on(1) == (4 if devices == 2 else 0)
        assert_exact(sess.run(None, feeds[0]), feeds[0])
        assert_exact(sess.submit(None, feeds[1]).result(timeout=30), feeds[1])
        assert_exact(asyncio.run(sess.arun(None, feeds[2])), feeds[2])
        done = threading.Event()
        got = {}

        def callback(results, user_data, err):
            got.update(results=results, user_data=user_data, err=err)
            done.set()

        sess.run_async(None, feeds[3], callback, "tag")
        assert done.wait(30)
        assert got["err"] == "" and got["user_data"] == "tag"
        assert_exact(got["results"], feeds[3])
        assert sess.run_pipeline(feeds[4], depth=2) is None
        assert sess.run_pipeline(feeds[5], depth=2) is None
        assert_exact(sess.run_pipeline(feeds[0], depth=2), feeds[4])
        second, third = sess.drain_pipeline()
        assert_exact(second, feeds[5])
        assert_exact(third, feeds[0])
        names = sess.run(["scores", "feature"], feeds[0])
        expected = MODEL.reference(feeds[0])
        np.testing.assert_array_equal(names[0], expected[1])
        np.testing.assert_array_equal(names[1], expected[0])


def test_dispatch_batch_is_bit_exact(npu3, devices, tmp_path):
    model = Model3([Tensor3("x", "int8", (1, 3, 2, 9), 2, 0.05)], [Tensor3("y", "float16", (1, 6))])
    batch = np.random.default_rng(3).uniform(-3, 3, (7, 3, 2, 9)).astype(np.float32)
    with InferenceSession(str(model.write(tmp_path))) as sess:
        [out] = sess.run(None, {"x": batch}, {"ztu_modelrt_dispatch_batch": True})
    expected = np.concatenate([model.reference([batch[i : i + 1]])[0] for i in range(7)])
    np.testing.assert_array_equal(out, expected)


def test_many_concurrent_submits_use_every_device_and_stay_exact(npu3, tmp_path):
    npu3.use(devices=2, cores=8, compute_us=2000)
    feeds = [MODEL.feeds(seed) for seed in range(24)]
    with InferenceSession(str(MODEL.write(tmp_path)), provider_options={"max_queue_size": 24}) as s:
        futures = [s.submit(None, feed) for feed in feeds]
        for future, feed in zip(futures, feeds):
            assert_exact(future.result(timeout=30), feed)
    assert npu3.max_parallel >= 2


def test_a_weighted_schedule_routes_tasks_to_the_devices(npu3, tmp_path):
    """Routes alternate between devices: group 0 is on device 0, group 1 on device 1."""
    feeds = MODEL.feeds(0)
    with InferenceSession(str(MODEL.write(tmp_path)), None, None, {"schedule": [0, 1, 1]}) as s:
        assert [slot.core for slot in s.worker_slots] == [0, 1]
        for _ in range(6):
            assert_exact(s.run(None, feeds), feeds)
        assert npu3.contexts_on(0) == 1 and npu3.contexts_on(1) == 1
    assert [npu3.core_runs(0, core) for core in range(3)] == [2, 2, 0]
    assert [npu3.core_runs(1, core) for core in range(3)] == [4, 4, 0]


def test_device_id_selects_devices(npu3, tmp_path):
    path = str(MODEL.write(tmp_path))
    with InferenceSession(path, provider_options=options(device_id=DEVICE_IDS[1])) as sess:
        assert_exact(sess.run(None, MODEL.feeds(1)), MODEL.feeds(1))
        assert npu3.contexts_on(0) == 0 and npu3.contexts_on(1) == 4
    both = options(device_id="#".join(reversed(DEVICE_IDS)))
    with InferenceSession(path, provider_options=both) as sess:
        assert len(sess.worker_slots) == 8
    with pytest.raises(ValueError, match=r"'device_id' names \['0000:09:00.0'\].*0000:01:00.0"):
        InferenceSession(path, provider_options=options(device_id=["0000:09:00.0"]))


def test_an_explicit_core_mask_gives_one_group_per_device(npu3, tmp_path):
    path = str(MODEL.write(tmp_path))
    provider_options = options(run_core_mask="0x30", device_id=DEVICE_IDS[0], priority=3)
    provider_options["threads_per_core"] = 2
    with InferenceSession(path, provider_options=provider_options) as sess:
        assert len(sess.worker_slots) == 2  # two contexts on the same cores
        assert npu3.contexts_with_priority(3) == 2
        assert_exact(sess.run(None, MODEL.feeds(2)), MODEL.feeds(2))
    assert npu3.core_runs(0, 4) == 1 and npu3.core_runs(0, 5) == 1 and npu3.core_runs(0, 0) == 0


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (0x1, r"'run_core_mask' 0x1 selects 1 NPU core\(s\), but the model was exported for 2"),
        (0xFF, r"0xff selects 8 .* exactly 2 bits, e.g. 0x3, or 'auto'"),
        (0x300, r"'run_core_mask' 0x300 names cores that device 0000:01:00.0 lacks \(it has 8\)"),
    ],
)
def test_a_core_mask_that_does_not_match_the_export_is_refused(npu3, tmp_path, mask, message):
    with pytest.raises(ValueError, match=message):
        InferenceSession(str(MODEL.write(tmp_path)), provider_options=options(run_core_mask=mask))
    assert npu3.calls("rknn3_model_init") == 0  # refused before the runtime would fail


def test_a_model_exported_for_more_cores_than_a_device_has(npu3, tmp_path):
    npu3.use(devices=1, cores=4)
    model = Model3(MODEL.inputs, MODEL.outputs, core_num=8)
    with pytest.raises(ValueError, match="exported for 8 NPU cores, device 0000:01:00.0 has 4"):
        InferenceSession(str(model.write(tmp_path)))


def test_run_timeout_is_a_typed_error_and_the_session_recovers(npu3, tmp_path):
    npu3.use(devices=1, cores=2, compute_us=200_000)
    feeds = MODEL.feeds(4)
    with InferenceSession(str(MODEL.write(tmp_path)), None, None, options(run_timeout_ms=5)) as s:
        expected = r"0000:01:00.0 cores 0x3 exceeded run_timeout_ms=5"
        with pytest.raises(RunTimeoutError, match=expected):
            s.run(None, feeds)
        with pytest.raises(TimeoutError) as caught:
            s.submit(None, feeds).result(timeout=30)
        assert caught.value.code == -7 and caught.value.name == "RKNN3_ERR_TIMEOUT"
        npu3.set_compute_us(0)
        assert_exact(s.run(None, feeds), feeds)


def test_weight_comes_from_the_companion_file_or_the_option(npu3, tmp_path):
    path = MODEL.write(tmp_path)
    moved = tmp_path / "elsewhere.weight"
    (tmp_path / "model.weight").rename(moved)
    with pytest.raises(FileNotFoundError, match=r"model.weight \(the companion of .*model.rknn\)"):
        InferenceSession(str(path), providers=["RKNPU3ExecutionProvider"])
    with InferenceSession(str(path), provider_options=options(weight_path=str(moved))) as sess:
        assert_exact(sess.run(None, MODEL.feeds(5)), MODEL.feeds(5))
    with pytest.raises(ValueError, match=r"given as bytes needs .*weight_path"):
        InferenceSession(MODEL.data())
    with InferenceSession(MODEL.data(), provider_options=options(weight_path=moved)) as sess:
        assert sess.get_modelmeta().custom_metadata_map == {
            "rknn_custom_string": '{"labels": ["cat"]}'
        }


def test_a_weight_of_another_export_is_refused(npu3, tmp_path):
    path = MODEL.write(tmp_path)
    (tmp_path / "model.weight").write_bytes(MODEL.weight(weight_id=9))
    npu3.expected_violations = 1  # the emulator flags the mismatch the binding cannot see
    with pytest.raises(RKNNError) as caught:
        InferenceSession(str(path))
    assert caught.value.name == "RKNN3_ERR_MODEL_INVALID"


def test_model_selection_by_header_companion_and_provider(tmp_path):
    plain = parse_provider_options(None)
    rknn2 = ModelSource(b"RKNN\0\0\0\0" + b"\0" * 32)
    assert choose_backend(rknn2, plain) == "rknn"
    assert choose_backend(rknn2, plain, ["RKNPU3ExecutionProvider"]) == "rknn3"
    assert choose_backend(rknn2, plain, [("RKNPU3ExecutionProvider", {})]) == "rknn3"
    assert choose_backend(ModelSource(MODEL.data()), plain) == "rknn3"
    unknown = tmp_path / "net.rknn"
    unknown.write_bytes(b"\x01\x02")
    assert choose_backend(ModelSource(b"\x01\x02", str(unknown)), plain) == "rknn"
    (tmp_path / "net.weight").write_bytes(b"w")
    assert choose_backend(ModelSource(b"\x01\x02", str(unknown)), plain) == "rknn3"


def test_specs_and_native_views(npu3, tmp_path):
    with InferenceSession(str(MODEL.write(tmp_path))) as sess:
        image, extra = sess.get_inputs()
        assert (image.name, image.shape, image.type) == ("image", [1, 3, 4, 5], "tensor(int8)")
        assert (extra.shape, extra.type) == ([2, 7], "tensor(float)")
        native = sess.get_native_inputs()[0]
        assert native.shape == [1, 1, 4, 5, 16]  # NC1HWC2, 16 int8 lanes
        assert sess.get_native_outputs()[2].shape == [1, 3, 2, 2, 8]  # float16: 8 lanes
        with pytest.raises(ValueError, match="image"):
            sess.run(None, [np.zeros((1, 3, 4, 4), np.float32), MODEL.feeds(0)[1]])
        assert_exact(sess.run(None, MODEL.feeds(6)), MODEL.feeds(6))


@pytest.mark.parametrize(
    ("api", "code", "name"),
    [
        ("rknn3_run", -5, "RKNN3_ERR_RUN_TASK_FAILED"),
        ("rknn3_mem_sync", -14, "RKNN3_ERR_MEM_SYNC_FAILED"),
    ],
)
def test_a_failed_run_raises_and_the_session_goes_on(npu3, tmp_path, api, code, name):
    npu3.use(devices=1, cores=2)
    feeds = MODEL.feeds(7)
    with InferenceSession(str(MODEL.write(tmp_path))) as sess:
        npu3.inject(api, code)
        with pytest.raises(RKNNError) as caught:
            sess.run(None, feeds)
        assert (caught.value.code, caught.value.name) == (code, name)
        assert_exact(sess.run(None, feeds), feeds)


@pytest.mark.parametrize(
    ("api", "code", "skip"),
    [
        ("rknn3_find_devices", -13, 0),
        ("rknn3_init", -10, 0),
        ("rknn3_load_model_from_data", -3, 0),
        ("rknn3_model_init", -1, 0),
        ("rknn3_query", -4, 0),
        ("rknn3_create_mem", -6, 0),
        ("rknn3_init", -13, 5),  # a later slot's context, on the second device
        ("rknn3_model_init", -1, 3),
        ("rknn3_create_mem", -6, 7),  # a later runner's mems
    ],
)
def test_a_failed_setup_leaks_nothing(npu3, tmp_path, api, code, skip):
    path = str(MODEL.write(tmp_path))
    npu3.inject(api, code, 1, skip)
    with pytest.raises(RKNNError) as caught:
        InferenceSession(path)
    assert caught.value.code == code
    assert npu3.calls(api) == skip + 1
    with InferenceSession(path) as sess:  # and the next session works
        assert_exact(sess.run(None, MODEL.feeds(8)), MODEL.feeds(8))


def test_incompatible_firmware_is_reported_by_a_1_1_runtime(npu3_11, tmp_path):
    npu3_11.set_firmware_version("1.0.4")
    with pytest.raises(RKNNError) as caught:
        InferenceSession(str(MODEL.write(tmp_path)))
    assert caught.value.name == "RKNN3_ERR_INCOMPATIBLE_VERSION"
    assert "librknn3_api, rknn3_transfer_proxy and the firmware are not one version" in str(
        caught.value
    )


def test_no_device_attached(npu3_11, tmp_path):
    npu3_11.use(devices=0)
    with pytest.raises(RuntimeError, match="no RKNPU3 device found .*rknn3_transfer_proxy"):
        InferenceSession(str(MODEL.write(tmp_path)))


def test_options_that_do_not_apply_are_refused(npu3_11, tmp_path):
    path = str(MODEL.write(tmp_path))
    with pytest.raises(ValueError, match="'tp_mode' does not apply to RKNPU3"):
        InferenceSession(path, provider_options={"tp_mode": "0"})
    with pytest.raises(ValueError, match=r"schedule names core group\(s\) \[8\]; .* has 8"):
        InferenceSession(path, provider_options={"schedule": [0, 8]})
    refused = pytest.raises(ValueError, match="use_weight_from is not supported for RKNPU3")
    with InferenceSession(path) as first, refused:
        InferenceSession(path, use_weight_from=first)


def test_make_rknpu3_provider_options():
    assert make_rknpu3_provider_options() == {
        "priority": 0,
        "run_timeout_ms": 0,
        "run_core_mask": "auto",
    }
    made = make_rknpu3_provider_options(
        runtime_library="/x/librknn3_api.so",
        device_id="a#b",
        weight_path="/m.weight",
        priority=2,
        run_timeout_ms=100,
        run_core_mask="0xf0",
    )
    assert made["device_id"] == ["a", "b"] and made["run_core_mask"] == 0xF0
    assert parse_provider_options(made).device_id == ("a", "b")
    for bad, message in [
        ({"run_core_mask": 0}, "rejects AUTO = 0"),
        ({"run_core_mask": "most"}, "'run_core_mask' must be 'auto'"),
        ({"run_timeout_ms": -1}, "'run_timeout_ms' must be >= 0"),
        ({"device_id": [1]}, "'device_id' must be a string or a list"),
        ({"device_id": "#"}, "must name at least one device"),
        ({"weight_path": 3}, "'weight_path' must be a path"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_rknpu3_provider_options(**bad)
    with pytest.raises(TypeError):
        make_rknpu3_provider_options(layout="nchw")  # engine keys go to make_provider_options


def test_a_hanging_init_is_abandoned_after_the_timeout(emulator3, monkeypatch, tmp_path):
    """A 1.0 runtime against another proxy/firmware version never returns from rknn3_init."""
    from rknn3_emu import Npu3

    npu = Npu3(emulator3.library("1.0"), monkeypatch.setenv)
    npu.use(devices=1, cores=2)
    npu.set_firmware_version("1.1.0")
    monkeypatch.setenv("EZ_RKNN3_INIT_TIMEOUT_S", "0.3")
    try:
        with pytest.raises(RKNNError, match=r"did not return within 0.3 s .*ez-rknn doctor"):
            InferenceSession(str(MODEL.write(tmp_path)))
    finally:
        npu.release_hang()  # the abandoned thread returns (-13) and ends
    assert npu.calls("rknn3_init") == 1 and npu.live_contexts == 0 and npu.violations == 0


def test_native_node_args_name_the_runtimes_layout(npu3_11, tmp_path):
    npu3_11.use(devices=1, cores=2)
    with InferenceSession(str(MODEL.write(tmp_path))) as sess:
        natives = {arg.name: arg for arg in sess.get_native_inputs() + sess.get_native_outputs()}
    for name, arg in natives.items():
        assert arg.layout in ("NCHW", "NHWC", "NC1HWC2", "UNDEFINED"), name
        dense = [int(np.prod(arg.shape[k + 1 :])) for k in range(len(arg.shape))]
        assert arg.strides == dense, name  # librknn3_api pads no rows
    assert natives["image"].layout != "UNDEFINED"  # a 4-D input has a native layout


def test_provider_options_come_in_onnxruntimes_shape_with_the_rknpu3_keys(npu3_11, tmp_path):
    npu3_11.use(devices=1, cores=2)
    with InferenceSession(str(MODEL.write(tmp_path)), provider_options=options(priority=2)) as sess:
        got = sess.get_provider_options()
    assert list(got) == ["RKNPU3ExecutionProvider"]
    values = got["RKNPU3ExecutionProvider"]
    assert values["priority"] == 2 and values["run_timeout_ms"] == 0
    assert values["max_queue_size"] == 3 and "runtime_library" not in values  # unset: left out
