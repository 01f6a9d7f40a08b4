"""Tiny ONNX models with rtmlib's (mmdeploy's) I/O contract, so tests run rtmlib's real code offline.

Test frames draw each "person" as a rectangle in one pure colour channel (BGR 0, 1 or 2 at 255, the
others 0). The detectors box the pixels above 200 in each channel, so there are three detection slots,
one per channel, with score 0.9 when the channel has any bright pixel and 0 otherwise.

- :func:`make_yolox`: YOLOX end2end — input [1,3,H,W] raw BGR → dets [1,3,5] (x1,y1,x2,y2 exclusive
  ends, score), labels [1,3] int64.
- :func:`make_rtmpose`: RTMPose SimCC — input [1,3,h,w] → simcc_x [1,J,2w], simcc_y [1,J,2h], each row
  peaked (value = the joint's score) at a fixed bin: the pose is a fixed template in crop space.
- :func:`make_rtmo`: RTMO — input [1,3,H,W] raw BGR → dets [1,3,5], keypoints [1,3,J,3] with joint j at
  (x1 + u_j·(x2-x1), y1 + v_j·(y2-y1)) of the channel's box, score 0.9·s_j.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
DET_SCORE = 0.9


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _save(nodes, inputs, outputs, path) -> Path:
    graph = helper.make_graph(nodes, Path(path).stem, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return Path(path)


def _channel_boxes() -> tuple[list, str, str]:
    """Nodes boxing each channel's bright pixels: 'dets' [1,3,5] and 'present' [1,3,1] (1 = any bright)."""
    nodes = [
        _const("thr", np.float32(200.0)),
        helper.make_node("Greater", ["input", "thr"], ["bright_b"]),
        helper.make_node("Cast", ["bright_b"], ["bright"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["bright"], ["cols"], axes=[2], keepdims=0),   # [1,3,W]
        helper.make_node("ReduceMax", ["bright"], ["rows"], axes=[3], keepdims=0),   # [1,3,H]
        helper.make_node("ReduceMax", ["cols"], ["present"], axes=[2], keepdims=1),  # [1,3,1]
        _const("one", np.int64(1)),
    ]
    for prof, a in (("cols", "x"), ("rows", "y")):
        nodes += [
            helper.make_node("ArgMax", [prof], [f"{a}1_i"], axis=2, keepdims=1),
            helper.make_node("ArgMax", [prof], [f"{a}2_l"], axis=2, keepdims=1, select_last_index=1),
            helper.make_node("Add", [f"{a}2_l", "one"], [f"{a}2_i"]),
            helper.make_node("Cast", [f"{a}1_i"], [f"{a}1"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [f"{a}2_i"], [f"{a}2"], to=TensorProto.FLOAT),
        ]
    nodes += [
        _const("det_score", np.float32(DET_SCORE)),
        helper.make_node("Mul", ["present", "det_score"], ["score"]),
        helper.make_node("Concat", ["x1", "y1", "x2", "y2", "score"], ["dets"], axis=2),  # [1,3,5]
    ]
    return nodes, "dets", "present"


def _image_input():
    return helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "H", "W"])


def make_yolox(path) -> Path:
    """YOLOX end2end stand-in that boxes the bright pixels of each colour channel."""
    nodes, _, _ = _channel_boxes()
    nodes += [
        helper.make_node("ReduceMax", ["x1_i"], ["x1_flat"], axes=[2], keepdims=0),  # [1,3] int64
        _const("zero", np.int64(0)),
        helper.make_node("Mul", ["x1_flat", "zero"], ["labels"]),
    ]
    outputs = [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, 3, 5]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 3])]
    return _save(nodes, [_image_input()], outputs, path)


def make_rtmpose(path, bins_x, bins_y, scores, input_size=(192, 256)) -> Path:
    """RTMPose SimCC stand-in emitting a fixed template: joint j peaks at bins (bins_x[j], bins_y[j]).

    input_size is rtmlib's (W, H); the SimCC split ratio is 2, so bins run over 2W and 2H.
    """
    w, h = input_size
    bins_x, bins_y = np.asarray(bins_x, int), np.asarray(bins_y, int)
    scores = np.asarray(scores, np.float32)
    J = len(scores)
    simcc_x = np.zeros((1, J, 2 * w), np.float32)
    simcc_y = np.zeros((1, J, 2 * h), np.float32)
    simcc_x[0, np.arange(J), bins_x] = scores
    simcc_y[0, np.arange(J), bins_y] = scores
    nodes = [
        # Tie the outputs to the input (0 · mean) so the graph is a real function of the crop.
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2, 3], keepdims=1),  # [1,1,1,1]
        _const("zero", np.float32(0.0)),
        helper.make_node("Mul", ["m", "zero"], ["m0"]),
        _const("shape3", np.array([1, 1, 1], np.int64)),
        helper.make_node("Reshape", ["m0", "shape3"], ["m3"]),
        _const("cx", simcc_x), _const("cy", simcc_y),
        helper.make_node("Add", ["cx", "m3"], ["simcc_x"]),
        helper.make_node("Add", ["cy", "m3"], ["simcc_y"]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])]
    outputs = [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, J, 2 * w]),
               helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, J, 2 * h])]
    return _save(nodes, inputs, outputs, path)


def make_rtmo(path, u, v, scores) -> Path:
    """RTMO stand-in: per channel box as the detector, joint j at (x1 + u_j·w, y1 + v_j·h)."""
    nodes, _, _ = _channel_boxes()
    J = len(scores)
    nodes += [
        _const("u", np.asarray(u, np.float32).reshape(1, 1, J)),
        _const("v", np.asarray(v, np.float32).reshape(1, 1, J)),
        _const("s", (DET_SCORE * np.asarray(scores, np.float32)).reshape(1, 1, J)),
        helper.make_node("Sub", ["x2", "x1"], ["bw"]),
        helper.make_node("Sub", ["y2", "y1"], ["bh"]),
        helper.make_node("Mul", ["bw", "u"], ["uw"]),
        helper.make_node("Mul", ["bh", "v"], ["vh"]),
        helper.make_node("Add", ["x1", "uw"], ["kx"]),       # [1,3,J]
        helper.make_node("Add", ["y1", "vh"], ["ky"]),
        helper.make_node("Mul", ["present", "s"], ["ks"]),
        _const("ax", np.array([3], np.int64)),
        helper.make_node("Unsqueeze", ["kx", "ax"], ["kx4"]),
        helper.make_node("Unsqueeze", ["ky", "ax"], ["ky4"]),
        helper.make_node("Unsqueeze", ["ks", "ax"], ["ks4"]),
        helper.make_node("Concat", ["kx4", "ky4", "ks4"], ["keypoints"], axis=3),
    ]
    outputs = [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [1, 3, 5]),
               helper.make_tensor_value_info("keypoints", TensorProto.FLOAT, [1, 3, J, 3])]
    return _save(nodes, [_image_input()], outputs, path)
