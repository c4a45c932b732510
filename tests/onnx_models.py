"""Small ONNX models the tests build with the onnx helper API, and the YOLOv8n from nudenet."""

from __future__ import annotations

import importlib.util
import os

import onnx
from onnx import TensorProto, helper

__all__ = [
    "yolo_path",
    "add_mul_model",
    "mixed_types_model",
    "dynamic_hw_model",
    "broadcast_model",
    "save",
]


def yolo_path() -> str:
    """YOLOv8n 320 shipped by the nudenet wheel (installed with --no-deps)."""
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nudenet is not installed: pip install --no-deps nudenet")
    return os.path.join(list(spec.submodule_search_locations)[0], "320n.onnx")


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "ez-rknn-tests"
    entry = model.metadata_props.add()
    entry.key, entry.value = "purpose", "tests"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_mul_model(batch: object = "N") -> bytes:
    """Two float inputs a[N,4], b[N,4] -> sum = a + b, prod = a * b (dynamic batch)."""
    t = TensorProto.FLOAT
    return _model(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["prod"]),
        ],
        [
            helper.make_tensor_value_info("a", t, [batch, 4]),
            helper.make_tensor_value_info("b", t, [batch, 4]),
        ],
        [
            helper.make_tensor_value_info("sum", t, [batch, 4]),
            helper.make_tensor_value_info("prod", t, [batch, 4]),
        ],
    )


def mixed_types_model() -> bytes:
    """ids int64[N,3] and h float16[N,3]: ids2 = ids * 2 (int64), h2 = h + h (float16),
    hf = float(h) (float32)."""
    return _model(
        [
            helper.make_node("Add", ["ids", "ids"], ["ids2"]),
            helper.make_node("Add", ["h", "h"], ["h2"]),
            helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("ids2", TensorProto.INT64, ["N", 3]),
            helper.make_tensor_value_info("h2", TensorProto.FLOAT16, ["N", 3]),
            helper.make_tensor_value_info("hf", TensorProto.FLOAT, ["N", 3]),
        ],
    )


def dynamic_hw_model() -> bytes:
    """img float[N,3,H,W] -> pooled = ReduceMean over H,W (float[N,3,1,1]), and a 0-D total."""
    t = TensorProto.FLOAT
    return _model(
        [
            helper.make_node("ReduceMean", ["img"], ["pooled"], axes=[2, 3], keepdims=1),
            helper.make_node("ReduceSum", ["img"], ["total"], keepdims=0),
        ],
        [helper.make_tensor_value_info("img", t, ["N", 3, "H", "W"])],
        [
            helper.make_tensor_value_info("pooled", t, ["N", 3, 1, 1]),
            helper.make_tensor_value_info("total", t, []),
        ],
    )


def broadcast_model() -> bytes:
    """y = a + b with a[N] and b[M]: valid feeds per our checks, but the runtime fails at run
    time unless N == M (or one is 1), which gives real errors from inside a task."""
    t = TensorProto.FLOAT
    return _model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [
            helper.make_tensor_value_info("a", t, ["N"]),
            helper.make_tensor_value_info("b", t, ["M"]),
        ],
        [helper.make_tensor_value_info("y", t, ["K"])],
    )


def save(tmp_path, name: str, data: bytes) -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "wb") as file:
        file.write(data)
    return path
