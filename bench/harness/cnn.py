"""A generated small CNN on 32x32x3 images: the model on which micro-batching can pay.

The shipped MLP costs 10-40 us a call, almost all of it per-call overhead too small to
be worth gathering requests for. This CNN (three 3x3 convolutions, then a
fully-connected head, VGG-style) costs about a millisecond a row at batch 1 on one
core, and much less per row in a batch: the head's weights are read once per call
(a matrix-vector product at batch 1, a matrix product at batch n), the part batching
saves. Random weights from a seeded generator: the benchmark measures cost, not
accuracy. Built with the ``onnx`` package's helper API (no torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CNN_NAME = "cnn32"
IMAGE_SHAPE = (3, 32, 32)
CNN_FEATURES = int(np.prod(IMAGE_SHAPE))  # the row a client sends: 3072 floats, CHW order


@dataclass(frozen=True)
class CnnShape:
    """Channels of the three convolutions and the width of the hidden dense layer."""

    conv1: int = 16
    conv2: int = 32
    conv3: int = 64
    hidden: int = 1536
    classes: int = 10


def write_cnn_model(
    directory: Path, *, name: str = CNN_NAME, shape: CnnShape = CnnShape(), seed: int = 0
) -> Path:
    """Write ``directory/name/model.onnx`` and its manifest; returns the model directory.

    Input ``[-1, 3072]`` float32 (a flattened CHW image, so v1 and v2 bodies carry one
    flat row), reshaped inside the graph to ``[-1, 3, 32, 32]``; output logits
    ``[-1, classes]``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}

    def he(name: str, *dims: int, fan_in: int) -> str:
        weights[name] = (rng.normal(size=dims) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return name

    def zeros(name: str, size: int) -> str:
        weights[name] = np.zeros(size, dtype=np.float32)
        return name

    channels = (IMAGE_SHAPE[0], shape.conv1, shape.conv2, shape.conv3)
    nodes = [helper.make_node("Reshape", ["input", "image_shape"], ["x0"])]
    weights["image_shape"] = np.array([-1, *IMAGE_SHAPE], dtype=np.int64)
    side = IMAGE_SHAPE[1]
    for i in range(3):
        cin, cout = channels[i], channels[i + 1]
        w = he(f"conv{i + 1}_w", cout, cin, 3, 3, fan_in=cin * 9)
        b = zeros(f"conv{i + 1}_b", cout)
        nodes += [
            helper.make_node("Conv", [f"x{i}", w, b], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        if i < 2:  # 32 -> 16 -> 8
            nodes.append(
                helper.make_node(
                    "MaxPool", [f"r{i}"], [f"x{i + 1}"], kernel_shape=[2, 2], strides=[2, 2]
                )
            )
            side //= 2
        else:
            nodes.append(helper.make_node("Identity", [f"r{i}"], [f"x{i + 1}"]))
    flat = shape.conv3 * side * side
    nodes += [
        helper.make_node("Flatten", ["x3"], ["flat"]),
        helper.make_node(
            "Gemm",
            ["flat", he("fc1_w", shape.hidden, flat, fan_in=flat), zeros("fc1_b", shape.hidden)],
            ["h"],
            transB=1,
        ),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node(
            "Gemm",
            [
                "hr",
                he("fc2_w", shape.classes, shape.hidden, fan_in=shape.hidden),
                zeros("fc2_b", shape.classes),
            ],
            ["logits"],
            transB=1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", CNN_FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", shape.classes])],
        [numpy_helper.from_array(value, key) for key, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model_dir = directory / name
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, model_dir / "model.onnx")
    manifest: dict[str, Any] = {
        "name": name,
        "version": "1",
        "file": "model.onnx",
        "input": {"name": "input", "shape": [-1, CNN_FEATURES], "dtype": "float32"},
        "output": {"name": "logits"},
        "labels": [f"class_{i}" for i in range(shape.classes)],
        "description": (
            f"generated CNN on 3x32x32 (conv {shape.conv1}/{shape.conv2}/{shape.conv3}, "
            f"dense {flat} -> {shape.hidden} -> {shape.classes}), random weights: a "
            "benchmark model on which batching can pay"
        ),
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return model_dir
