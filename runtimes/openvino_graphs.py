"""Load-time rewrites of the exported ONNX graphs for OpenVINO (the files on disk stay as exported).

Only INT8 graphs are rewritten: OpenVINO's low-precision transformations read some Q/DQ placements
differently from onnxruntime and TensorRT, whose placement the export follows.
"""

from __future__ import annotations

import onnx

from reftok_deploy.base.graph_regions import COMPUTE_OPS, consumers_of

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
        """Whether ``node``, after the activations above it, is a compute op whose input is not dequantised."""
        while node is not None and node.op_type in ACTIVATIONS:
            node = producer.get(node.input[0])
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
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return model, len(removed) // 2
