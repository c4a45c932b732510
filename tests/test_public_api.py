"""The public namespace is pinned: API.md's names, nothing more, importable without any backend."""

from __future__ import annotations

import inspect
import subprocess
import sys

import ez_rknn_async
from ez_rknn_async import InferenceSession, SessionClosedError, SubmitTimeoutError, errors

ERRORS = {
    "RKNNError",
    "RuntimeNotFoundError",
    "RunTimeoutError",
    "UnsupportedRuntimeError",
    "InferenceError",
    "SessionClosedError",
    "BackendClosedError",
    "SessionBrokenError",
    "SubmitTimeoutError",
    "IOBindingError",
    "BindingInFlightError",
    "BindingClosedError",
    "ValueReleasedError",
    "ZeroCopyUnavailableError",
}
PUBLIC = ERRORS | {
    "InferenceSession",
    "make_provider_options",
    "make_rknpu2_provider_options",
    "make_rknpu3_provider_options",
    "RknnProviderOptions",
    "Rknpu2ProviderOptions",
    "Rknpu3ProviderOptions",
    "NodeArg",
    "ModelMetadata",
    "SessionStats",
    "SlotStats",
    "OrtValue",
    "IOBinding",
    "SessionIOBinding",
    "__version__",
}

SESSION_METHODS = {
    "run": ["output_names", "input_feed", "run_options"],
    "run_async": ["output_names", "input_feed", "callback", "user_data", "run_options"],
    "run_pipeline": ["input_feed", "depth", "reset"],
    "drain_pipeline": [],
    "submit": ["output_names", "input_feed", "run_options"],
    "arun": ["output_names", "input_feed", "run_options"],
    "get_inputs": [],
    "get_outputs": [],
    "get_native_inputs": [],
    "get_native_outputs": [],
    "get_modelmeta": [],
    "get_providers": [],
    "get_provider_options": [],
    "io_binding": [],
    "run_with_iobinding": ["iobinding", "run_options", "io_binding"],
    "close": ["timeout"],
}


def test_namespace_is_exactly_the_contract():
    assert set(ez_rknn_async.__all__) == PUBLIC
    for name in PUBLIC - {"__version__"}:
        assert getattr(ez_rknn_async, name).__module__ == "ez_rknn_async", name


def test_every_typed_error_lives_in_errors_and_its_tree_is_documented():
    assert set(errors.__all__) == ERRORS
    for name in ERRORS:
        cls = getattr(errors, name)
        assert getattr(ez_rknn_async, name) is cls
        assert issubclass(cls, RuntimeError), name
        assert f"+-- {name} " in errors.__doc__, f"{name} is missing from the tree"
    assert issubclass(errors.RuntimeNotFoundError, errors.RKNNError)
    assert issubclass(errors.BackendClosedError, SessionClosedError)
    binding_errors = ("BindingInFlightError", "BindingClosedError", "ValueReleasedError")
    for name in (*binding_errors, "ZeroCopyUnavailableError"):
        assert issubclass(getattr(errors, name), errors.IOBindingError)


def test_session_signatures_follow_onnxruntime():
    init = inspect.signature(InferenceSession.__init__)
    assert list(init.parameters)[1:] == [
        "path_or_bytes",
        "sess_options",
        "providers",
        "provider_options",
        "use_weight_from",
    ]
    assert init.parameters["use_weight_from"].kind is inspect.Parameter.KEYWORD_ONLY
    for method, params in SESSION_METHODS.items():
        assert list(inspect.signature(getattr(InferenceSession, method)).parameters)[1:] == params
    assert inspect.iscoroutinefunction(InferenceSession.arun)
    assert {"input_names", "output_names"} <= {
        name for name, value in vars(InferenceSession).items() if isinstance(value, property)
    }
    assert issubclass(SessionClosedError, RuntimeError)
    assert issubclass(SubmitTimeoutError, TimeoutError) and issubclass(
        SubmitTimeoutError, RuntimeError
    )


def test_import_needs_no_backend_package():
    code = (
        "import sys, ez_rknn_async\n"
        "loaded = [m for m in ('onnxruntime', 'openvino') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
