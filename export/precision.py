"""Mixed-precision ONNX for TensorRT 11's strongly typed builds (and ONNX Runtime).

FP16 everywhere except the token arithmetic, the encoder's cost volume (see
:func:`cost_volume_nodes`) and the motion warp: in the encoder
every node after the last Conv (FSQ bound, Round, id packing) and in the decoder
every node before the first Conv (id unpacking) stays FP32, so token ids are
identical in meaning to the FP32 graph; so does everything feeding a GridSample
(the sampling grid: FP16 holds pixel positions of a 1080p frame only to ~0.5 px).
Graph I/O keeps its FP32/int32 types.
"""

from __future__ import annotations

import onnx

from reftok_deploy.base.graph_regions import consumers_of, cost_volume_nodes, token_arithmetic_nodes, topological_sort


def to_mixed_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 copy of an FP32 graph with the token arithmetic kept in FP32 and FP32/int32 I/O."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    keep = token_arithmetic_nodes(model) + cost_volume_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep, op_block_list=[])
    remove_fp16_round_trips(converted.graph)
    topological_sort(converted.graph)
    return converted


def remove_fp16_round_trips(graph: onnx.GraphProto) -> int:
    """Drop Cast(FP32->FP16)->Cast(FP16->FP32) pairs in place; returns how many FP32 readers were rewired.

    The converter wraps every blocked node in casts, so two FP32 nodes in a row talk through an
    FP16 tensor. On the sampling grid that rounded positions to 2^-11 of the frame (1/16 px at
    256 px wide) and moved high-contrast edges by up to 0.073 (max abs, range [-1,1]).
    """
    to = onnx.TensorProto
    consumers = consumers_of(graph)
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for down in graph.node:
        if down.op_type != "Cast" or _cast_to(down) != to.FLOAT16:
            continue
        readers = consumers.get(down.output[0], [])
        for up in readers:
            if up.op_type != "Cast" or _cast_to(up) != to.FLOAT:
                continue
            if up.output[0] in outputs:  # a graph output keeps its name: the cast becomes an Identity
                up.op_type, up.input[0] = "Identity", down.input[0]
                del up.attribute[:]
                continue
            rename[up.output[0]] = down.input[0]
            dropped.add(id(up))
        live = [r for r in readers if down.output[0] in r.input and id(r) not in dropped]
        if down.output[0] not in outputs and not live:
            dropped.add(id(down))
    kept = [n for n in graph.node if id(n) not in dropped]
    for node in kept:
        for i, name in enumerate(node.input):
            while name in rename:  # transitively, in case a rewired source was itself a dropped cast
                name = rename[name]
            node.input[i] = name
    del graph.node[:]
    graph.node.extend(kept)
    return len(rename)


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)
