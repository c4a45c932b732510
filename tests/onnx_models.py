"""Small ONNX models the tests build with the onnx helper API, the YOLOv8n from nudenet and the
PP-OCRv4 models from rapidocr-onnxruntime (both wheels installed with --no-deps)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from math import prod
from typing import Any, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

__all__ = [
    "yolo_path",
    "ppocr_path",
    "add_mul_model",
    "mixed_types_model",
    "dynamic_hw_model",
    "small_types_model",
    "emulator_network_model",
    "fp16_activations_copy",
    "broadcast_model",
    "save",
]


def _wheel_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not installed: pip install --no-deps {package}")
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


def yolo_path() -> str:
    """YOLOv8n 320 shipped by the nudenet wheel (installed with --no-deps)."""
    return _wheel_file("nudenet", "320n.onnx")


def ppocr_path(name: str = "ch_PP-OCRv4_rec_infer.onnx") -> str:
    """A PP-OCR model shipped by the rapidocr-onnxruntime wheel (installed with --no-deps): the
    v4 text recogniser (x [N, 3, 48, W] -> [N, W / 8, 6625] character scores) by default."""
    return _wheel_file("rapidocr_onnxruntime", "models", name)


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


def small_types_model() -> bytes:
    """flag bool[N] -> flipped = not flag; i8 int8[N] -> i8_out; u8 uint8[N] -> u8_out
    (identities); i32 int32[N] -> i32_twice = i32 + i32."""
    return _model(
        [
            helper.make_node("Not", ["flag"], ["flipped"]),
            helper.make_node("Identity", ["i8"], ["i8_out"]),
            helper.make_node("Identity", ["u8"], ["u8_out"]),
            helper.make_node("Add", ["i32", "i32"], ["i32_twice"]),
        ],
        [
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N"]),
            helper.make_tensor_value_info("i8", TensorProto.INT8, ["N"]),
            helper.make_tensor_value_info("u8", TensorProto.UINT8, ["N"]),
            helper.make_tensor_value_info("i32", TensorProto.INT32, ["N"]),
        ],
        [
            helper.make_tensor_value_info("flipped", TensorProto.BOOL, ["N"]),
            helper.make_tensor_value_info("i8_out", TensorProto.INT8, ["N"]),
            helper.make_tensor_value_info("u8_out", TensorProto.UINT8, ["N"]),
            helper.make_tensor_value_info("i32_twice", TensorProto.INT32, ["N"]),
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


_EMU_TYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "uint8": TensorProto.UINT8,
}


def emulator_network_model(model: Any, weights: Optional[Sequence[float]] = None) -> bytes:
    """The network of tests/npu_emulator (README.md, "The network") as ONNX, for ``model`` (an
    ``EmuModel``): ``out_j[k] = sum_i w_i * x_i[(k + j) mod n_i] + 0.5 * j`` with ``x_i`` input i
    flattened in NCHW order and ``w_i = gain * (i + 1)`` unless ``weights`` are given. Inputs are
    named and shaped as the RKNN session shows them (4-D inputs NCHW); integer inputs must be
    outputs float32. Unquantised inputs (zp 0, scale 1) keep their type and float32 arithmetic
    reproduces the emulator to rounding; a quantised input is float32 here, as in the float model
    it was converted from, so the emulator differs by its quantisation error."""
    weights = (
        [model.gain * (i + 1) for i in range(len(model.inputs))] if weights is None else weights
    )
    nodes, inputs, initializers = [], [], []
    for i, tensor in enumerate(model.inputs):
        plain = tensor.type.startswith("float") or (tensor.zp, tensor.scale) == (0, 1.0)
        kind = _EMU_TYPES[tensor.type] if plain else TensorProto.FLOAT
        dims = list(tensor.dims)
        shape = [dims[0], dims[3], dims[1], dims[2]] if len(dims) == 4 else dims
        inputs.append(helper.make_tensor_value_info(tensor.name, kind, shape))
        nodes += [
            helper.make_node("Cast", [tensor.name], [f"f{i}"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", [f"f{i}", "flat"], [f"x{i}"]),
        ]
    initializers.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"))
    outputs = []
    for j, tensor in enumerate(model.outputs):
        assert tensor.type == "float32", tensor
        count = prod(tensor.dims)
        terms = []
        for i, source in enumerate(model.inputs):
            index = (np.arange(count) + j) % prod(source.dims)
            initializers += [
                numpy_helper.from_array(index.astype(np.int64), f"idx{j}_{i}"),
                numpy_helper.from_array(np.array(weights[i], dtype=np.float32), f"w{j}_{i}"),
            ]
            nodes += [
                helper.make_node("Gather", [f"x{i}", f"idx{j}_{i}"], [f"g{j}_{i}"]),
                helper.make_node("Mul", [f"g{j}_{i}", f"w{j}_{i}"], [f"t{j}_{i}"]),
            ]
            terms.append(f"t{j}_{i}")
        initializers += [
            numpy_helper.from_array(np.array(0.5 * j, dtype=np.float32), f"bias{j}"),
            numpy_helper.from_array(np.array(tensor.dims, dtype=np.int64), f"shape{j}"),
        ]
        nodes += [
            helper.make_node("Sum", terms, [f"s{j}"]),
            helper.make_node("Add", [f"s{j}", f"bias{j}"], [f"b{j}"]),
            helper.make_node("Reshape", [f"b{j}", f"shape{j}"], [tensor.name]),
        ]
        outputs.append(
            helper.make_tensor_value_info(tensor.name, TensorProto.FLOAT, list(tensor.dims))
        )
    return _model(nodes, inputs, outputs, initializers)


def fp16_activations_copy(path: str) -> bytes:
    """The model at ``path`` with every float32 tensor a node makes rounded to float16 and back
    (a Cast pair after each node): the numbers of an fp16 NPU, computed by any CPU runtime."""
    model = shape_inference.infer_shapes(onnx.load(path))
    graph = model.graph
    kinds = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for index, name in enumerate(node.output):
            if kinds.get(name) != TensorProto.FLOAT:
                continue
            node.output[index] = f"{name}__f32"
            nodes += [
                helper.make_node(
                    "Cast", [f"{name}__f32"], [f"{name}__f16"], to=TensorProto.FLOAT16
                ),
                helper.make_node("Cast", [f"{name}__f16"], [name], to=TensorProto.FLOAT),
            ]
    del graph.node[:]
    graph.node.extend(nodes)
    return model.SerializeToString()
