"""Does OpenVINO's INT8 convolution on this CPU match exact integer arithmetic?

One Q/DQ convolution (96 input channels, 3x3, symmetric int8 activations and per-channel int8
weights, the layout of reftok-export's INT8 graphs) runs in onnxruntime, which computes it exactly
(float accumulation of int8 products), and in OpenVINO. On a CPU without VNNI, int8 convolutions
multiply with 16-bit pairwise sums (AVX2 ``vpmaddubsw``) that saturate for full-range weights;
with 7-bit weights no pair can overflow. Prints the largest difference for both, and the CPU's flags.

    .venv/bin/python docs/openvino_int8_saturation.py
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

IN_CHANNELS, OUT_CHANNELS, SIDE = 96, 32, 16


def qdq_conv(weights: np.ndarray, activation_scale: float) -> ModelProto:
    """``x [1,IN,SIDE,SIDE] float32`` -> Q/DQ (int8, zero point 0) -> Conv with DQ'd int8 ``weights``."""
    inits = [numpy_helper.from_array(np.array(activation_scale, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
             numpy_helper.from_array(weights, "w_int8"),
             numpy_helper.from_array(np.full(OUT_CHANNELS, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(OUT_CHANNELS, np.int8), "w_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["w_dq"], axis=0),
             helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "qdq_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN_CHANNELS, SIDE, SIDE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def largest_difference(model: ModelProto, x: np.ndarray) -> tuple[float, float]:
    """(max |OpenVINO - onnxruntime|, mean |onnxruntime output|) for input ``x``."""
    import onnxruntime as ort
    import openvino as ov

    exact = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.asarray(compiled({"x": x})[compiled.outputs[0]])
    return float(np.abs(got - exact).max()), float(np.abs(exact).mean())


def cpu_int8_flags() -> list[str]:
    """The CPU's int8 dot-product extensions named in /proc/cpuinfo (Linux), if any."""
    try:
        flags = next(line for line in open("/proc/cpuinfo", encoding="utf-8") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return ["unknown"]
    return sorted(f for f in flags if "vnni" in f or f.startswith("amx")) or ["none (no VNNI, no AMX)"]


def main() -> None:
    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (OUT_CHANNELS, IN_CHANNELS, 3, 3)).astype(np.int8)
    x = rng.uniform(0.0, 1.0, (1, IN_CHANNELS, SIDE, SIDE)).astype(np.float32)  # ReLU6-like, non-negative
    for label, w in (("8-bit weights", weights), ("7-bit weights", (weights // 2).astype(np.int8))):
        diff, scale = largest_difference(qdq_conv(w, 1.0 / 127), x)
        print(f"{label}: max |OpenVINO - exact| {diff:.4f} (outputs ~{scale:.2f})")
    print("CPU int8 extensions:", ", ".join(cpu_int8_flags()))


if __name__ == "__main__":
    main()
