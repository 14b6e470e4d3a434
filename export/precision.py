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

COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# Ops kept in FP32 together with all their non-compute ancestors.
FP32_SAMPLING_OPS = {"GridSample"}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def token_arithmetic_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay FP32: downstream of the last compute op, or upstream of the first.

    Found by graph reachability rather than by names, so it holds for both exporters.
    """
    graph = model.graph
    nodes = list(graph.node)
    compute = [i for i, n in enumerate(nodes) if n.op_type in COMPUTE_OPS]
    if not compute:
        return [n.name for n in nodes]
    consumers = _consumers(graph)
    keep: set[int] = set()
    ids = {id(n): i for i, n in enumerate(nodes)}

    # Downstream of every compute op that feeds no other compute op (the encoder head).
    def reaches_compute(start: onnx.NodeProto) -> bool:
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            for out in node.output:
                for nxt in consumers.get(out, []):
                    if id(nxt) in seen:
                        continue
                    if nxt.op_type in COMPUTE_OPS:
                        return True
                    seen.add(id(nxt))
                    stack.append(nxt)
        return False

    for i in compute:
        if not reaches_compute(nodes[i]):
            stack = [nodes[i]]
            while stack:
                node = stack.pop()
                for out in node.output:
                    for nxt in consumers.get(out, []):
                        j = ids[id(nxt)]
                        if j not in keep and nxt.op_type not in COMPUTE_OPS:
                            keep.add(j)
                            stack.append(nxt)
    # Upstream of compute ops, from integer graph inputs (the decoder's token unpacking).
    int_inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type in (onnx.TensorProto.INT32,
                                                                                   onnx.TensorProto.INT64)}
    stack = [n for name in int_inputs for n in consumers.get(name, [])]
    while stack:
        node = stack.pop()
        j = ids[id(node)]
        if j in keep or node.op_type in COMPUTE_OPS:
            continue
        keep.add(j)
        for out in node.output:
            stack.extend(consumers.get(out, []))
    # Sampling ops and their whole non-compute input chain (grid coordinates, Range, the reference expand).
    producer = {out: j for j, n in enumerate(nodes) for out in n.output}
    stack = [j for j, n in enumerate(nodes) if n.op_type in FP32_SAMPLING_OPS]
    visited: set[int] = set()
    while stack:
        j = stack.pop()
        if j in visited:
            continue
        visited.add(j)
        keep.add(j)
        for name in nodes[j].input:
            k = producer.get(name)
            if k is not None and nodes[k].op_type not in COMPUTE_OPS:
                stack.append(k)
    return [nodes[j].name for j in sorted(keep)]


MATCHING_OPS = {"Softmax"}


def cost_volume_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the non-compute nodes of the encoder's motion measurement: everything between the
    motion-feature convs and the next convs through a Softmax (unit norm, correlation slices and their
    Concat, the soft-argmax and the displacement Concat).

    They stay FP32 in FP16 graphs and unquantised in INT8 ones: the soft-argmax divides cosine
    similarities by a small temperature, so int8 steps of the volume move the measured motion by
    cells (measured: INT8 tokens 35 % equal to FP32, -0.8 dB, with the volume quantised).
    """
    nodes = list(model.graph.node)
    producer = {out: j for j, n in enumerate(nodes) for out in n.output}
    consumers = _consumers(model.graph)
    ids = {id(n): i for i, n in enumerate(nodes)}
    keep: set[int] = set()
    starts = [j for j, n in enumerate(nodes) if n.op_type in MATCHING_OPS]
    stack = list(starts)
    while stack:  # upstream, to the convs that make the features
        j = stack.pop()
        if j in keep:
            continue
        keep.add(j)
        for name in nodes[j].input:
            k = producer.get(name)
            if k is not None and nodes[k].op_type not in COMPUTE_OPS:
                stack.append(k)
    stack = list(starts)
    seen: set[int] = set()
    while stack:  # downstream, to the convs that read the displacements
        j = stack.pop()
        if j in seen:
            continue
        seen.add(j)
        keep.add(j)
        for out in nodes[j].output:
            for nxt in consumers.get(out, []):
                if nxt.op_type not in COMPUTE_OPS:
                    stack.append(ids[id(nxt)])
    return [nodes[j].name for j in sorted(keep)]


def sampling_head_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes whose output feeds a sampling grid (the decoder's motion head).

    INT8 leaves them in float: an int8 motion field moves pixels in steps of range/127, and
    ONNX Runtime cannot fuse a conv whose output is also read by Shape ops.
    """
    nodes = list(model.graph.node)
    producer = {out: n for n in nodes for out in n.output}
    heads: list[str] = []
    stack = [name for n in nodes if n.op_type in FP32_SAMPLING_OPS for name in n.input[1:2]]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in COMPUTE_OPS:
            heads.append(node.name)
        else:
            stack.extend(node.input)
    return heads


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
    consumers = _consumers(graph)
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


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node follows its producers (the converter appends casts)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or a dangling input")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)
