"""The RKNN backend on the emulated NPU: numbers, layouts, introspection, contexts and cores,
weight sharing, custom ops, errors and leaks. Every test ends with the ``npu`` fixture checking
that the emulator saw no rule violation and holds no context or buffer."""

from __future__ import annotations

import shutil
import threading
import tracemalloc

import numpy as np
import pytest

from ez_rknn_async import InferenceSession, RKNNError, make_provider_options
from ez_rknn_async.backends import ModelSource
from ez_rknn_async.backends.rknn import abi, custom_ops, library
from ez_rknn_async.backends.rknn.backend import load
from ez_rknn_async.options import ProviderOptions

from checks import assert_same
from rknn_emu import EmuModel, EmuTensor, Npu, reference, to_nchw

pytest_plugins = ("rknn_fixtures",)

#: A quantised detector-like model: int8 NHWC image + a float16 vector in, int8 and fp16 out.
INT8_MODEL = EmuModel(
    inputs=[
        EmuTensor("images", "int8", (1, 6, 5, 3), zp=-4, scale=0.03),
        EmuTensor("meta", "float16", (2, 7)),
    ],
    outputs=[
        EmuTensor("boxes", "int8", (1, 4, 3, 5), zp=3, scale=0.07),
        EmuTensor("scores", "float16", (12,)),
    ],
    gain=0.75,
    custom_string='{"labels": ["cat", "dog"]}',
)
#: A float model as the toolkit exports them: fp16 inside.
FLOAT_MODEL = EmuModel(
    inputs=[EmuTensor("x", "float16", (1, 4, 4, 2))],
    outputs=[EmuTensor("y", "float16", (1, 2, 4, 4)), EmuTensor("z", "float32", (5,))],
    gain=1.5,
)


def feeds_for(model, rng, dtype=np.float32):
    """Random feeds in the user's default (NCHW) layout, in range for ``dtype``."""
    feeds = []
    for tensor in model.inputs:
        shape = to_nchw(tensor.dims) if len(tensor.dims) == 4 else tensor.dims
        if np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            feeds.append(rng.integers(max(info.min, -20), min(info.max, 40), shape).astype(dtype))
        else:
            feeds.append(rng.uniform(-4, 4, shape).astype(dtype))
    return feeds


def session(model, **options):
    return InferenceSession(model.data(), provider_options=make_provider_options(**options))


# ---------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint8])
@pytest.mark.parametrize("model", [INT8_MODEL, FLOAT_MODEL], ids=["int8", "float"])
def test_outputs_match_the_reference_for_every_input_dtype(npu, model, dtype):
    feeds = feeds_for(model, np.random.default_rng(1), dtype)
    with session(model) as sess:
        assert_same(sess.run(None, feeds), reference(model, feeds))


def test_quantised_inputs_saturate_like_the_runtime(npu):
    feeds = [np.full((1, 3, 6, 5), 1e3, np.float32), np.zeros((2, 7), np.float32)]
    with session(INT8_MODEL) as sess:
        assert_same(sess.run(None, feeds), reference(INT8_MODEL, feeds))


@pytest.mark.parametrize(
    ("layout", "shape"),
    [
        ("original", (1, 3, 6, 5)),
        ("nchw", (1, 3, 6, 5)),
        ("nchw_software", (1, 3, 6, 5)),
        ("nhwc", (1, 6, 5, 3)),
        ("any", (1, 6, 5, 3)),
    ],
)
def test_layouts(npu, layout, shape):
    rng = np.random.default_rng(2)
    image = rng.uniform(-2, 2, shape).astype(np.float32)
    meta = rng.uniform(-2, 2, (2, 7)).astype(np.float32)
    nchw = image if shape[1] == 3 else image.transpose(0, 3, 1, 2)
    with session(INT8_MODEL, layout=layout) as sess:
        assert sess.get_inputs()[0].shape == list(shape)
        assert sess.get_inputs()[1].shape == [2, 7]
        assert_same(sess.run(None, [image, meta]), reference(INT8_MODEL, [nchw, meta]))


def test_non_contiguous_inputs(npu):
    rng = np.random.default_rng(3)
    image = rng.uniform(-2, 2, (1, 5, 6, 3)).astype(np.float32).transpose(0, 3, 2, 1)
    meta = rng.uniform(-2, 2, (7, 2)).astype(np.float32).T
    with session(INT8_MODEL) as sess:
        assert_same(sess.run(None, [image, meta]), reference(INT8_MODEL, [image, meta]))


def test_output_selection_repeats_give_distinct_arrays(npu):
    feeds = feeds_for(INT8_MODEL, np.random.default_rng(4))
    boxes, scores = reference(INT8_MODEL, feeds)
    with session(INT8_MODEL) as sess:
        first, second, third = sess.run(["scores", "boxes", "scores"], feeds)
    assert_same([first, second, third], [scores, boxes, scores])
    assert first is not third


# ---------------------------------------------------------------------------------- introspection


def test_inputs_outputs_show_the_models_internal_types(npu):
    with session(INT8_MODEL) as sess:
        assert [(a.name, a.shape, a.type) for a in sess.get_inputs()] == [
            ("images", [1, 3, 6, 5], "tensor(int8)"),
            ("meta", [2, 7], "tensor(float16)"),
        ]
        assert [(a.name, a.shape, a.type) for a in sess.get_outputs()] == [
            ("boxes", [1, 4, 3, 5], "tensor(int8)"),
            ("scores", [12], "tensor(float16)"),
        ]
        assert sess.get_providers() == ["RKNPU2ExecutionProvider"]


def test_unnamed_tensors_get_positional_names(npu):
    model = EmuModel([EmuTensor("_", "float32", (2,))], [EmuTensor("_", "float32", (2,))] * 2)
    with session(model) as sess:
        assert sess.input_names == ["input_0"]
        assert sess.output_names == ["output_0", "output_1"]


def test_native_views(npu):
    with session(INT8_MODEL) as sess:
        assert [a.shape for a in sess.get_native_inputs()] == [[1, 6, 5, 3], [2, 7]]
        # NC1HWC2 with C2 = 16 for int8: C1 = ceil(4 / 16) = 1
        assert [a.shape for a in sess.get_native_outputs()] == [[1, 1, 3, 5, 16], [12]]


def test_custom_string_is_model_metadata(npu):
    with session(INT8_MODEL) as sess:
        meta = sess.get_modelmeta().custom_metadata_map
        assert meta == {"rknn_custom_string": '{"labels": ["cat", "dog"]}'}
    with session(FLOAT_MODEL) as sess:
        assert sess.get_modelmeta().custom_metadata_map == {}


def test_versions_are_reported_and_old_runtimes_warned_about(npu):
    with session(FLOAT_MODEL) as sess:
        backend = sess._backend
        assert (backend.api_version, backend.driver_version) == ("2.4.2 (emulated)", "0.9.8")
        assert backend.library_path == str(npu.paths.library)
    npu.set_versions("2.3.2 (429f97ae6b@2025-04-09T09:09:27)", "0.9.6")
    with pytest.warns(UserWarning, match=r"RKNN API version 2\.3\.2 .*minimum version is 2\.4\.1"):
        session(FLOAT_MODEL).close()


def test_model_file_path_and_bytes_load_the_same(npu, tmp_path):
    path = INT8_MODEL.write(tmp_path / "model.rknn")
    feeds = feeds_for(INT8_MODEL, np.random.default_rng(5))
    with InferenceSession(str(path)) as from_path, InferenceSession(path.read_bytes()) as raw:
        assert_same(from_path.run(None, feeds), raw.run(None, feeds))


# ---------------------------------------------------------------------------------- contexts, cores


def test_default_uses_every_core_of_an_rk3588(npu):
    with session(FLOAT_MODEL) as sess:
        assert [s.core for s in sess.worker_slots] == [0, 1, 2]
        # Every runner a dup: the first context stays idle (never bound to a core).
        assert npu.calls("rknn_init") == 1 and npu.calls("rknn_dup_context") == 3
        assert [npu.contexts_with_mask(m) for m in (-1, 1, 2, 4)] == [1, 1, 1, 1]
        feeds = feeds_for(FLOAT_MODEL, np.random.default_rng(6))
        futures = [sess.submit(None, feeds) for _ in range(60)]
        for future in futures:
            assert_same(future.result(), reference(FLOAT_MODEL, feeds))
    assert npu.calls("rknn_destroy") == 4


def test_disable_dup_context_inits_every_context(npu):
    with session(FLOAT_MODEL, disable_dup_context=True):
        assert npu.calls("rknn_init") == 3 and npu.calls("rknn_dup_context") == 0


def test_schedule_and_threads_per_core(npu):
    with session(FLOAT_MODEL, schedule=[2, 0, 2], threads_per_core=2):
        assert npu.calls("rknn_init") + npu.calls("rknn_dup_context") == 5  # 4 runners + idle
        assert [npu.contexts_with_mask(m) for m in (1, 2, 4)] == [2, 0, 2]


@pytest.mark.parametrize(
    ("tp_mode", "mask"), [("auto", 0), ("all", 0xFFFF), ("0,1", 3), ("0,1,2", 7)]
)
def test_tp_mode_binds_every_context_to_the_mask(npu, tp_mode, mask):
    with session(FLOAT_MODEL, tp_mode=tp_mode, threads_per_core=2) as sess:
        assert npu.contexts_with_mask(mask) == 2
        feeds = feeds_for(FLOAT_MODEL, np.random.default_rng(7))
        assert_same(sess.run(None, feeds), reference(FLOAT_MODEL, feeds))


def test_single_core_soc_never_sets_a_core_mask(npu):
    npu.use("rk3566")
    for options in (
        {},
        {"schedule": [0]},
        {"tp_mode": "auto"},
        {"tp_mode": "0"},
        {"tp_mode": "all"},
    ):
        with session(FLOAT_MODEL, **options) as sess:
            feeds = feeds_for(FLOAT_MODEL, np.random.default_rng(8))
            assert_same(sess.run(None, feeds), reference(FLOAT_MODEL, feeds))
            assert len(sess.worker_slots) == 1
    assert npu.calls("rknn_set_core_mask") == 0


@pytest.mark.parametrize(
    ("soc", "options", "message"),
    [
        ("rk3566", {"schedule": [0, 1]}, "core 1, but RK3566 has NPU core 0 "),
        ("rk3566", {"tp_mode": "1"}, "mask 0x2 .* RK3566 has NPU core 0"),
        ("rk3576", {"schedule": [2]}, "core 2, but RK3576 has NPU cores 0, 1 "),
        ("rk3576", {"tp_mode": "0,1,2"}, "mask 0x7 .* RK3576 has NPU cores 0, 1"),
        ("rk3588", {"schedule": [3]}, "core 3, but RK3588 has NPU cores 0, 1, 2 "),
    ],
)
def test_cores_the_soc_lacks_are_value_errors(npu, soc, options, message):
    npu.use(soc)
    with pytest.raises(ValueError, match=message):
        session(FLOAT_MODEL, **options)
    assert npu.calls("rknn_set_core_mask") == 0


def test_rk3576_defaults_to_its_two_cores(npu):
    npu.use("rk3576")
    with session(FLOAT_MODEL) as sess:
        assert [s.core for s in sess.worker_slots] == [0, 1]
        assert [npu.contexts_with_mask(m) for m in (1, 2)] == [1, 1]


def test_cores_run_in_parallel(npu):
    npu.use("rk3588", compute_us=3000)
    with session(FLOAT_MODEL, schedule=[0, 1, 2], max_queue_size=6) as sess:
        feeds = feeds_for(FLOAT_MODEL, np.random.default_rng(9))
        for future in [sess.submit(None, feeds) for _ in range(30)]:
            future.result()
    assert npu.max_parallel == 3
    assert min(npu.core_runs(core) for core in range(3)) > 0


# ---------------------------------------------------------------------------------- weight sharing


def vector_model(rows, **kwargs):
    shape = (rows, 4)
    return EmuModel(
        [EmuTensor("x", "float32", shape)], [EmuTensor("y", "float32", shape)], **kwargs
    )


OWNER = vector_model(3, gain=2.5, weight_id=7)
SHARER = vector_model(5, gain=None, weight_id=7)  # exported with remove_weight, other shape


def test_weight_sharing_uses_the_owners_weights(npu):
    owner = session(OWNER)
    sharer = InferenceSession(SHARER.data(), use_weight_from=owner)
    assert npu.calls("rknn_dup_context") == 3  # the owner's; every sharer context is an rknn_init
    assert npu.calls("rknn_init") == 1 + 3
    x = np.random.default_rng(10).uniform(-1, 1, (5, 4)).astype(np.float32)
    expected = reference(SHARER, [x], gain=OWNER.gain)
    assert_same(sharer.run(None, [x]), expected)
    owner.close()  # the owner's first context stays until the sharer is gone
    assert npu.live_contexts == 4
    assert_same(sharer.run(None, [x]), expected)
    sharer.close()


def test_a_weightless_model_needs_use_weight_from(npu):
    with pytest.raises(RKNNError, match=r"rknn_init failed: RKNN_ERR_MODEL_INVALID \(-6\)"):
        session(SHARER)


def test_weight_sharing_with_another_network_fails(npu):
    other = EmuModel(SHARER.inputs, SHARER.outputs, gain=None, weight_id=8)
    with session(OWNER) as owner, pytest.raises(RKNNError, match="RKNN_ERR_MODEL_INVALID"):
        InferenceSession(other.data(), use_weight_from=owner)


def test_weight_sharing_excludes_custom_ops(npu):
    plugin = str(npu.paths.plugin("librkcst_emuop.so"))
    with session(OWNER) as owner, pytest.raises(ValueError, match="cannot be combined"):
        InferenceSession(
            SHARER.data(),
            provider_options=make_provider_options(custom_op_paths=[plugin]),
            use_weight_from=owner,
        )


# ---------------------------------------------------------------------------------- custom ops

CUSTOM = vector_model(1, custom_op="EmuOp")


def test_custom_op_model_fails_without_its_plugin(npu):
    with session(CUSTOM) as sess, pytest.raises(RKNNError, match=r"rknn_run failed: RKNN_ERR_FAIL"):
        sess.run(None, [np.ones((1, 4), np.float32)])


def test_custom_ops_are_registered_on_every_fresh_context(npu):
    plugin = str(npu.paths.plugin("librkcst_emuop.so"))
    with pytest.warns(UserWarning, match="rknn_dup_context is disabled"):
        sess = session(CUSTOM, custom_op_paths=[plugin])
    with sess:
        assert npu.calls("rknn_dup_context") == 0 and npu.calls("rknn_init") == 3
        assert npu.calls("rknn_register_custom_ops") == 3
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        for future in [sess.submit(None, [x]) for _ in range(12)]:
            assert_same(future.result(), reference(CUSTOM, [x]))


@pytest.mark.parametrize(
    ("plugins", "message"),
    [
        (
            ["librkcst_emuop.so", "librkcst_emuop_again.so"],
            "Duplicate custom op definition",
        ),
        (["librkcst_noentry.so"], "dlsym fail for get_rknn_custom_op"),
        (["librkcst_absent.so"], "dlopen .*librkcst_absent.so fail"),
    ],
)
def test_bad_custom_op_plugins(npu, plugins, message):
    paths = [str(npu.paths.plugin(name)) for name in plugins]
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match=message):
        session(CUSTOM, custom_op_paths=paths)


def test_custom_ops_from_the_default_folder(npu, tmp_path, monkeypatch):
    for name in ("librkcst_emuop.so", "librkcst_noentry.so"):
        shutil.copy(npu.paths.plugin(name), tmp_path / name)
    shutil.copy(
        npu.paths.plugin("librkcst_other.so"), tmp_path / "libother.so"
    )  # not a plugin name
    monkeypatch.setattr(custom_ops, "DEFAULT_PLUGIN_DIR", str(tmp_path))
    with pytest.warns(UserWarning) as warned:
        sess = session(CUSTOM, custom_op_default_path=True)
    assert any("skipping custom op plugin: dlsym fail" in str(w.message) for w in warned)
    with sess:
        assert npu.calls("rknn_register_custom_ops") == 3
        assert_same(
            sess.run(None, [np.ones((1, 4), np.float32)]), reference(CUSTOM, [np.ones((1, 4))])
        )


def test_missing_default_plugin_folder_is_a_warning(npu, tmp_path, monkeypatch):
    monkeypatch.setattr(custom_ops, "DEFAULT_PLUGIN_DIR", str(tmp_path / "none"))
    with pytest.warns(UserWarning) as warned:
        session(FLOAT_MODEL, custom_op_default_path=True).close()
    assert any("not readable" in str(w.message) for w in warned)


# ---------------------------------------------------------------------------------- errors

ERROR_CODES = [code for code in sorted(abi.ERRORS) if code]


@pytest.mark.parametrize("code", ERROR_CODES)
@pytest.mark.parametrize("api", ["rknn_inputs_set", "rknn_run", "rknn_outputs_get"])
def test_every_runtime_error_reaches_the_user_with_its_name(npu, api, code):
    name = abi.error_name(code)
    feeds = feeds_for(FLOAT_MODEL, np.random.default_rng(11))
    with session(FLOAT_MODEL, schedule=[0]) as sess:
        npu.inject(api, code)
        with pytest.raises(RKNNError, match=rf"^{api} failed: {name} \({code}\): ") as caught:
            sess.run(None, feeds)
        assert (caught.value.code, caught.value.name) == (code, name)
        assert_same(sess.run(None, feeds), reference(FLOAT_MODEL, feeds))  # still usable


@pytest.mark.parametrize("code", ERROR_CODES)
def test_init_errors_reach_the_user(npu, code):
    npu.inject("rknn_init", code)
    with pytest.raises(RKNNError, match=rf"rknn_init failed: {abi.error_name(code)} \({code}\)"):
        session(FLOAT_MODEL)


@pytest.mark.parametrize("api", ["rknn_dup_context", "rknn_set_core_mask", "rknn_query"])
def test_failures_while_opening_release_everything(npu, api):
    npu.inject(api, -4, count=1 if api != "rknn_set_core_mask" else 3)
    with pytest.raises(RKNNError, match=rf"{api} failed: RKNN_ERR_MALLOC_FAIL \(-4\)"):
        session(FLOAT_MODEL)


def test_run_async_callback_gets_the_error_name(npu):
    npu.inject("rknn_run", -2)
    done = threading.Event()
    seen = []
    with session(FLOAT_MODEL, schedule=[0]) as sess:
        feeds = feeds_for(FLOAT_MODEL, np.random.default_rng(12))

        def callback(results, user_data, err):
            seen.append((results, user_data, err))
            done.set()

        sess.run_async(None, feeds, callback, 7)
        assert done.wait(10)
    assert seen[0][0] is None and seen[0][1] == 7
    assert "rknn_run failed: RKNN_ERR_TIMEOUT (-2)" in seen[0][2]


def test_garbage_is_not_a_model(npu):
    with pytest.raises(RKNNError, match=r"RKNN_ERR_MODEL_INVALID \(-6\)"):
        InferenceSession(b"\x00\x01 definitely not a model")


def test_model_for_another_soc(npu):
    model = EmuModel(FLOAT_MODEL.inputs, FLOAT_MODEL.outputs, platform="rk3566")
    with pytest.raises(RKNNError, match=r"RKNN_ERR_TARGET_PLATFORM_UNMATCH \(-13\)"):
        session(model)
    npu.use("rk3566")
    session(model).close()


def test_missing_runtime_library(npu, monkeypatch, tmp_path):
    monkeypatch.setenv("EZ_RKNN_RUNTIME_LIB", str(tmp_path / "librknnrt.so"))
    with pytest.raises(library.RuntimeNotFoundError, match="set EZ_RKNN_RUNTIME_LIB to its path"):
        session(FLOAT_MODEL)


def test_a_zero_copy_only_runtime_says_what_it_lacks(npu, monkeypatch):
    """RV1103/RV1106's librknnmrt has no rknn_dup_context / rknn_inputs_set / rknn_outputs_get."""
    monkeypatch.setenv("EZ_RKNN_RUNTIME_LIB", str(npu.paths.zero_copy_only))
    variant = Npu(npu.paths, monkeypatch.setenv, library=npu.paths.zero_copy_only)
    variant.use("rk3588")
    with session(FLOAT_MODEL) as sess:
        assert variant.calls("rknn_init") == 3  # no dup: every context is a fresh rknn_init
        with pytest.raises(RKNNError, match="rknn_inputs_set is not available in .*librknnmrt.so"):
            sess.run(None, feeds_for(FLOAT_MODEL, np.random.default_rng(14)))
    assert (variant.violations, variant.live_allocations) == (0, 0)


def test_weight_sharing_needs_an_rknn_session(npu):
    with pytest.raises(ValueError, match="RKNN backend"):
        load(ModelSource(FLOAT_MODEL.data()), ProviderOptions(), share_with=object())


# ---------------------------------------------------------------------------------- leaks


def test_thousands_of_runs_leave_memory_flat(npu):
    feeds = feeds_for(INT8_MODEL, np.random.default_rng(13))
    with session(INT8_MODEL, schedule=[0]) as sess:
        for _ in range(200):
            sess.run(None, feeds)
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(3000):
                sess.run(None, feeds)
                assert npu.live_allocations < 30
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 64 * 1024, growth
    assert npu.calls("rknn_outputs_get") == npu.calls("rknn_outputs_release") == 3200
