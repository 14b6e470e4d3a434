"""Load-time rewrites of the exported ONNX graphs for OpenVINO (the files on disk stay as exported), and the
small INT8 probe graphs its self-test runs (:func:`reftok_deploy.runtimes.openvino_runner.int8_self_test`).

Only INT8 graphs are rewritten: OpenVINO's low-precision transformations read some Q/DQ placements
differently from onnxruntime and TensorRT, whose placement the export follows.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from reftok_deploy.base.graph_regions import COMPUTE_OPS, PART_JOINING_OPS, consumers_of, drop_nodes

# Ops between a conv and the Q it feeds that keep the conv's output "from" that conv (ReLU6 is a Clip).
ACTIVATIONS = ("Clip", "Relu")


def float_skip_connections(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(``model`` with fewer Q/DQ pairs, pairs removed): a residual ``Add`` reads a float conv's output directly.

    A float conv is one whose input is not dequantised (the INT8 export leaves the convs on pixels and token
    codes in float). When its activation is quantised once for the next int8 conv and once for the skip
    connection's Add, OpenVINO 2026.4 misreads the pair (bisected pair by pair on the shipped decoder on a
    Xeon with AMX: -1.8 dB against onnxruntime, 34.66 vs 36.50 dB on box.mp4; the decoder has two such
    pairs). Without them OpenVINO gave 36.45 dB and box + tree -0.06 dB against FP32. The int8 convs keep
    their int8 inputs. Expects one DQ per reader (``calibration.qdq.separate_shared_activation_qdq``);
    a Q or DQ with several readers is left alone.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = consumers_of(graph)
    outputs = {o.name for o in graph.output}

    def float_conv(node: onnx.NodeProto | None) -> bool:
        """Whether ``node``, after the activations above it, is a compute op whose input is not dequantised, or
        the sum of a conv computed in parts one of which is (model.reftok.conv_over_groups)."""
        while node is not None and node.op_type in ACTIVATIONS:
            node = producer.get(node.input[0])
        return float_part(node)

    def float_part(node: onnx.NodeProto | None) -> bool:
        if node is not None and node.op_type in PART_JOINING_OPS:
            return any(float_part(producer.get(name)) for name in node.input)
        if node is None or node.op_type not in COMPUTE_OPS:
            return False
        source = producer.get(node.input[0])
        return source is None or source.op_type != "DequantizeLinear"

    removed: set[int] = set()
    for add in (n for n in graph.node if n.op_type == "Add"):
        for k, name in enumerate(add.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or len(consumers[dq.output[0]]) != 1 \
                    or len(consumers[q.output[0]]) != 1 or dq.output[0] in outputs \
                    or not float_conv(producer.get(q.input[0])):
                continue
            add.input[k] = q.input[0]
            removed |= {id(q), id(dq)}
    drop_nodes(graph, removed)
    return model, len(removed) // 2


def quantise_concat_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(``model`` with each ``Concat -> QuantizeLinear`` read as ``QuantizeLinear`` per input -> ``Concat`` of
    the int8 tensors, concats rewritten): the same numbers (a quantisation is elementwise and a concat moves
    data), one transformation fewer for OpenVINO.

    OpenVINO 2026.4 on an AMD EPYC (Zen 4, AVX512-VNNI, no AMX) computes an int8 conv that reads a quantised
    Concat as if its input scale were 1: every input is rounded to whole units of the float value (measured
    on a 1x1 identity conv, scale 0.05: inputs come back in steps of 20 codes; the shipped encoder's
    three such convs and the decoder's one took box.mp4 from 77.6 % tokens equal (onnxruntime INT8) to
    7.5 %, -7 dB). Quantising before the Concat gives onnxruntime's numbers there. Only a Q with a
    per-tensor scale that is the Concat's one reader is moved; other concats are left alone.
    """
    graph = model.graph
    consumers = consumers_of(graph)
    outputs = {o.name for o in graph.output}
    scalars = {i.name for i in graph.initializer if int(np.prod(i.dims)) == 1}
    moved: dict[int, onnx.NodeProto] = {}
    for node in graph.node:
        readers = consumers.get(node.output[0], []) if node.op_type == "Concat" else []
        if len(readers) == 1 and readers[0].op_type == "QuantizeLinear" and node.output[0] not in outputs \
                and readers[0].input[1] in scalars:
            moved[id(node)] = readers[0]
    dropped = {id(q) for q in moved.values()}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in dropped:
            continue
        q = moved.get(id(node))
        if q is not None:
            for k, name in enumerate(node.input):
                per_input = onnx.NodeProto()
                per_input.CopyFrom(q)
                per_input.name, per_input.input[0] = f"{q.name}_input{k}", name
                per_input.output[0] = f"{q.output[0]}_input{k}"
                nodes.append(per_input)
                node.input[k] = per_input.output[0]
            node.output[0] = q.output[0]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model, len(moved)


# Ops that only move or repeat values: a dequantised tensor read through them is still the same numbers.
DATA_MOVEMENT = {"Concat", "DepthToSpace", "Expand", "Flatten", "Gather", "Identity", "Pad", "Reshape", "Slice",
                 "SpaceToDepth", "Split", "Squeeze", "Tile", "Transpose", "Unsqueeze"}


def float_reads_of_float_tensors(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(``model`` with fewer Q/DQ pairs, pairs removed): a Q/DQ pair whose value no int8 op reads is dropped, and
    its readers read the float tensor: a pair read only by an activation (a conv's output quantised before its
    ReLU6, which is quantised again after it) or only through data movement that never reaches a
    QuantizeLinear (the reference features expanded over the frames and concatenated with pixels for the
    encoder's float first conv). The int8 convs keep their int8 inputs; the dropped pairs were rounding only.

    Measured with OpenVINO 2026.4 on an AMD EPYC (Zen 4): OpenVINO folds such a Clip into the integer domain of
    the pair before it with its bound rounded down (ReLU6 at 6 read as 18 steps of 0.319, 5.74: saturated values
    come back 5 steps low in the next quantisation), and the expanded features came out truncated instead of
    rounded in half their values (the tests' export, 64x64: up to 24 steps). With :func:`quantise_concat_inputs`
    only, the tests' export missed parity (-0.91 dB against onnxruntime FP32); with this too, -0.13 dB.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = consumers_of(graph)
    outputs = {o.name for o in graph.output}

    def requantised(name: str, seen: set[int]) -> bool:
        """Whether ``name`` reaches a QuantizeLinear through data movement only."""
        for reader in consumers.get(name, []):
            if reader.op_type == "QuantizeLinear":
                return True
            if reader.op_type in DATA_MOVEMENT and id(reader) not in seen:
                seen.add(id(reader))
                if any(requantised(out, seen) for out in reader.output):
                    return True
        return False

    replaced: dict[str, str] = {}
    removed: set[int] = set()
    for dq in (n for n in graph.node if n.op_type == "DequantizeLinear"):
        q = producer.get(dq.input[0])
        readers = consumers.get(dq.output[0], [])
        if q is None or q.op_type != "QuantizeLinear" or len(consumers[q.output[0]]) != 1 or not readers \
                or dq.output[0] in outputs:
            continue
        kinds = {r.op_type for r in readers}
        if not (kinds <= set(ACTIVATIONS) or kinds <= DATA_MOVEMENT) or requantised(dq.output[0], set()):
            continue
        replaced[dq.output[0]] = q.input[0]
        removed |= {id(q), id(dq)}
    for node in graph.node:
        for k, name in enumerate(node.input):
            while name in replaced:  # a pair read through another removed pair
                name = replaced[name]
            node.input[k] = name
    drop_nodes(graph, removed)
    return model, len(removed) // 2


# The self-test's probes: activations at scale PROBE_SCALE (symmetric int8, as the export quantises them),
# per-channel int8 weights, an int32 bias; the exact answer is computed with integers (:func:`exact_conv`).
PROBE_SCALE = 0.05
PROBE_SHAPE = (1, 8, 8, 8)  # N, C per input, H, W
PROBE_OUT_CHANNELS = 16
PROBE_KINDS = ("plain", "concat", "activation")
# "activation": the input is quantised at this scale, a ReLU6 reads it, and that is quantised at PROBE_SCALE;
# 6 / 0.32 is not whole (18.75 steps) and 0.32 / 0.05 = 6.4 steps never rounds from a tie.
PROBE_PRE_SCALE = 0.32


def int8_conv_probe(kind: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(model, feed, exact output, one accumulator unit per output channel) of one quantised 3x3 conv laid out as
    the INT8 export lays them out: a float tensor -> QuantizeLinear -> DequantizeLinear -> Conv with
    DequantizeLinear'd int8 weights and int32 bias. ``kind``: ``plain``; ``concat``, the conv reads two inputs
    concatenated before the QuantizeLinear; ``activation``, the input was quantised before a ReLU6 (Clip 0..6)
    that the conv's QuantizeLinear reads.

    The inputs are exact multiples of their scale over the whole int8 range, a corner of them at +127 against
    weights at +-127 (the products that overflow a u8 x s8 pair sum on CPUs whose int8 path saturates: measured
    with OpenVINO limited to AVX2 or AVX512 without VNNI, ``ONEDNN_MAX_CPU_ISA``, ``plain`` is off by 1.15e6)."""
    if kind not in PROBE_KINDS:
        raise ValueError(f"unknown probe {kind!r}; use one of {', '.join(PROBE_KINDS)}")
    n, c, h, w = PROBE_SHAPE
    inputs = 2 if kind == "concat" else 1
    rng = np.random.default_rng(20261204)
    weights = rng.integers(-127, 128, size=(PROBE_OUT_CHANNELS, c * inputs, 3, 3)).astype(np.int8)
    weights[: PROBE_OUT_CHANNELS // 4] = 127
    weight_scale = rng.uniform(0.5e-3, 1.5e-3, PROBE_OUT_CHANNELS).astype(np.float32)
    bias_scale = (np.float32(PROBE_SCALE) * weight_scale).astype(np.float32)
    bias = rng.integers(-2000, 2000, PROBE_OUT_CHANNELS).astype(np.int32)
    codes = rng.integers(-128, 128, size=(n, c * inputs, h, w))
    codes[:, :, : h // 2, : w // 2] = 127
    in_scale = np.float32(PROBE_PRE_SCALE if kind == "activation" else PROBE_SCALE)
    values = (codes * in_scale).astype(np.float32)
    if kind == "activation":  # what the conv's QuantizeLinear sees, and its codes (no ties: see PROBE_PRE_SCALE)
        codes = np.clip(np.rint(np.clip(values, 0, 6) / np.float32(PROBE_SCALE)), -128, 127).astype(np.int64)
    names = [f"x{k}" for k in range(inputs)]
    inits = [numpy_helper.from_array(np.array(PROBE_SCALE, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
             numpy_helper.from_array(weights, "w"), numpy_helper.from_array(weight_scale, "w_scale"),
             numpy_helper.from_array(np.zeros(PROBE_OUT_CHANNELS, np.int8), "w_zero"),
             numpy_helper.from_array(bias, "b"), numpy_helper.from_array(bias_scale, "b_scale"),
             numpy_helper.from_array(np.zeros(PROBE_OUT_CHANNELS, np.int32), "b_zero")]
    nodes, source = [], names[0]
    if kind == "concat":
        nodes.append(helper.make_node("Concat", names, ["x"], axis=1))
        source = "x"
    elif kind == "activation":
        inits += [numpy_helper.from_array(np.array(PROBE_PRE_SCALE, np.float32), "pre_scale"),
                  numpy_helper.from_array(np.array(0, np.float32), "low"),
                  numpy_helper.from_array(np.array(6, np.float32), "high")]
        nodes += [helper.make_node("QuantizeLinear", [source, "pre_scale", "x_zero"], ["pre_q"]),
                  helper.make_node("DequantizeLinear", ["pre_q", "pre_scale", "x_zero"], ["pre_dq"]),
                  helper.make_node("Clip", ["pre_dq", "low", "high"], ["x"])]
        source = "x"
    nodes += [helper.make_node("QuantizeLinear", [source, "x_scale", "x_zero"], ["x_q"]),
              helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
              helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_dq"], axis=0),
              helper.make_node("DequantizeLinear", ["b", "b_scale", "b_zero"], ["b_dq"], axis=0),
              helper.make_node("Conv", ["x_dq", "w_dq", "b_dq"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, f"int8_conv_probe_{kind}",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, c, h, w]) for name in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    feed = {name: np.ascontiguousarray(values[:, k * c:(k + 1) * c]) for k, name in enumerate(names)}
    unit = np.float64(PROBE_SCALE) * weight_scale.astype(np.float64)
    exact = (exact_conv(codes, weights) + bias[None, :, None, None]) * unit[None, :, None, None]
    return model, feed, exact, unit


def exact_conv(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """3x3, stride 1, zero padding 1 convolution of int8 ``codes`` [N,C,H,W] by ``weights`` [O,C,3,3] in int64."""
    _, _, h, w = codes.shape
    padded = np.pad(codes.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    taps = weights.astype(np.int64)
    return sum(np.einsum("nchw,oc->nohw", padded[:, :, i:i + h, j:j + w], taps[:, :, i, j])
               for i in range(3) for j in range(3))
