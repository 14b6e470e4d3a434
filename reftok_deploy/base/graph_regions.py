"""Regions of an exported RefTok graph that must not lose precision, found by graph reachability.

Shared by the FP16 conversion (export) and INT8 quantisation (calibration), so it sits below
both and imports onnx only: the token arithmetic, the encoder's cost volume, the decoder's
sampling grid and motion head, and (INT8 only) the convs on the pixels and token codes with the
ops that lead to them. Works on graphs from either exporter (no node names assumed).
"""

from __future__ import annotations

import onnx

# Learned layers (ops with weights). MatMul is not one here: the models' only MatMuls multiply two
# activations (the cost volume, :func:`reftok_deploy.model.matching.correlation`) and belong to that region;
# tests/test_export.py checks that no exported MatMul reads a weight.
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm"}
# Ops kept in FP32 together with all their non-compute ancestors.
FP32_SAMPLING_OPS = {"GridSample"}
SHAPE_OPS = {"Shape", "Size"}


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def drop_nodes(graph: onnx.GraphProto, removed: set[int]) -> None:
    """Remove the nodes whose ``id`` is in ``removed`` from ``graph``, in place, keeping the others' order."""
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)


def token_arithmetic_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that must stay FP32: downstream of the last compute op, or upstream of the first.

    Found by graph reachability rather than by names, so it holds for both exporters.
    """
    graph = model.graph
    nodes = list(graph.node)
    compute = [i for i, n in enumerate(nodes) if n.op_type in COMPUTE_OPS]
    if not compute:
        return [n.name for n in nodes]
    consumers = consumers_of(graph)
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
    keep |= _non_compute_ancestors(nodes, [j for j, n in enumerate(nodes) if n.op_type in FP32_SAMPLING_OPS])
    return [nodes[j].name for j in sorted(keep)]


def _non_compute_ancestors(nodes: list[onnx.NodeProto], starts: list[int]) -> set[int]:
    """Indices of ``starts`` and every node they read from, stopping at compute ops (not included)."""
    producer = {out: j for j, n in enumerate(nodes) for out in n.output}
    found: set[int] = set()
    stack = list(starts)
    while stack:
        j = stack.pop()
        if j in found:
            continue
        found.add(j)
        for name in nodes[j].input:
            k = producer.get(name)
            if k is not None and nodes[k].op_type not in COMPUTE_OPS:
                stack.append(k)
    return found


MATCHING_OPS = {"Exp", "Softmax"}  # the soft-argmax's weights (its softmax written out; exports before it: Softmax)


def cost_volume_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the non-compute nodes of the encoder's motion measurement: everything between the
    motion-feature convs and the next convs through the soft-argmax's Exp (unit norm, the correlation's matrix
    products, gathers and Concat, the soft-argmax and the displacement Concat).

    They stay FP32 in FP16 graphs and unquantised in INT8 ones: the soft-argmax divides cosine
    similarities by a small temperature, so int8 steps of the volume move the measured motion by
    cells (measured: INT8 tokens 35 % equal to FP32, -0.8 dB, with the volume quantised).
    """
    nodes = list(model.graph.node)
    consumers = consumers_of(model.graph)
    ids = {id(n): i for i, n in enumerate(nodes)}
    starts = [j for j, n in enumerate(nodes) if n.op_type in MATCHING_OPS]
    keep = _non_compute_ancestors(nodes, starts)  # upstream, to the convs that make the features
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


def input_regions(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(non-compute nodes, compute nodes) reached from the graph inputs along data edges, stopping at
    the first compute node of each path and not following Shape reads (metadata, not values)."""
    consumers = consumers_of(model.graph)
    stack = [n for i in model.graph.input for n in consumers.get(i.name, [])]
    seen: set[int] = set()
    path: list[str] = []
    convs: list[str] = []
    while stack:
        node = stack.pop()
        if id(node) in seen or node.op_type in SHAPE_OPS:
            continue
        seen.add(id(node))
        if node.op_type in COMPUTE_OPS:
            convs.append(node.name)
            continue
        path.append(node.name)
        for out in node.output:
            stack.extend(consumers.get(out, []))
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return sorted(path, key=order.__getitem__), sorted(convs, key=order.__getitem__)


# Ops that join the parts of a conv computed per part of its input (model.reftok.conv_over_groups: group parts,
# a per-clip part gathered for each group, pixel parts; the encoder's first conv subtracts the reference's part).
PART_JOINING_OPS = {"Add", "Sub", "Gather"}


def conv_parts(model: onnx.ModelProto, convs: list[str]) -> tuple[list[str], list[str]]:
    """(joining nodes, other compute nodes): the rest of each conv in ``convs`` that the model computes in parts.

    From each conv's output, the Add/Sub/Gather nodes that sum it with other parts, and the convs whose outputs
    those nodes read (through Add/Sub/Gather only); repeated until nothing new. A skip connection is not a part:
    its other input comes through an activation. INT8 keeps a whole conv float when any part reads the pixels or
    the codes, so the parts' sum (whose terms can be far larger than the activation after it) is never rounded.
    """
    graph = model.graph
    consumers = consumers_of(graph)
    producer = {out: n for n in graph.node for out in n.output}
    joins: dict[int, onnx.NodeProto] = {}
    found: dict[int, onnx.NodeProto] = {}
    stack = [n for n in graph.node if n.name in set(convs)]
    while stack:
        node = stack.pop()
        for out in node.output:  # downstream: the joins this part feeds
            for nxt in consumers.get(out, []):
                if nxt.op_type in PART_JOINING_OPS and id(nxt) not in joins:
                    joins[id(nxt)] = nxt
                    stack.append(nxt)
        if node.op_type in PART_JOINING_OPS:  # upstream: the other parts a join reads
            for name in node.input:
                source = producer.get(name)
                if source is None or id(source) in joins or id(source) in found:
                    continue
                if source.op_type in COMPUTE_OPS and source.name not in convs:
                    found[id(source)] = source
                    stack.append(source)
                elif source.op_type in PART_JOINING_OPS:
                    joins[id(source)] = source
                    stack.append(source)
    order = {id(n): i for i, n in enumerate(graph.node)}
    by_order = lambda nodes: [n.name for n in sorted(nodes.values(), key=lambda n: order[id(n)])]  # noqa: E731
    return by_order(joins), by_order(found)


def input_reading_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the compute nodes that read a graph input through non-compute ops only: the convs on
    the pixels (reference, frames, the warped reference) and on the decoded token codes.

    INT8 leaves them, and the ops between them and the inputs (:func:`input_paths`), in float. Their
    inputs are exact values (8-bit pixels, FSQ levels) that one calibrated int8 scale, shared with the
    features they are concatenated with, rounds coarsely (measured on the stage-7 checkpoint's export
    validation: INT8 -0.69 dB against FP32 with them quantised, -0.21 dB without; RefTok's premise is an
    unquantised reference).
    """
    return input_regions(model)[1]


def input_paths(model: onnx.ModelProto) -> list[str]:
    """Names of the non-compute nodes reached from the graph inputs before any compute node: those that
    lead to :func:`input_reading_convs` (pixel unshuffles, frames - reference, the Concats that meet the
    codes) and those on a path from an input to an output (the warp, ``warped + gate * residual`` and
    the reshapes and Clip after it)."""
    return input_regions(model)[0]


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
