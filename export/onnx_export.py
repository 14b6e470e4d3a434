"""Trace one export seam (encoder or decoder) to an ONNX file, written atomically.

Both exporters are supported: ``dynamo=True`` (torch.export, the default in
current PyTorch) and ``dynamo=False`` (TorchScript tracing). Batch, height and
width are dynamic; the block length is fixed by the checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from reftok_deploy.export.graphs import GRAPHS
from reftok_deploy.base.files import AtomicFile
from reftok_deploy.base.spec import INPUTS, OUTPUTS, TensorSpec, fixed_dims
from reftok_deploy.model.reftok import RefTok

OPSET = 18  # the dynamo exporter's floor; parsed by TensorRT 8.6+ and every current onnxruntime


class _NoTorchvisionNotice(logging.Filter):
    """The dynamo exporter's op registry warns "torchvision is not installed. Skipping torchvision::nms"
    (and roi_align, roi_pool, deform_conv2d) on every export: RefTok uses no torchvision op, so the
    notice says nothing here. Only that message is dropped; every other record of the logger passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


def _quiet_torchvision_notice() -> None:
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    if not any(isinstance(f, _NoTorchvisionNotice) for f in logger.filters):
        logger.addFilter(_NoTorchvisionNotice())


def example_inputs(model: RefTok, graph: str, batch: int = 1, height: int = 64, width: int = 64,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Tracing inputs of the right dtypes and shapes (values only steer tracing, never the graph)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in INPUTS[graph]:
        shape = spec.shape(batch, height, width, model.cfg.geometry)
        if spec.dtype == np.int32:
            tensors.append(torch.randint(0, model.fsq.codebook_size, shape, generator=gen, dtype=torch.int32))
        else:
            tensors.append(torch.rand(shape, generator=gen) * 2 - 1)
    return tuple(tensors)

def _dynamic_axes(specs: tuple[TensorSpec, ...], model: RefTok) -> dict[str, dict[int, str]]:
    return {s.name: {i: d for i, d in enumerate(fixed_dims(s, model.cfg.geometry)) if isinstance(d, str)} for s in specs}

def export_graph(model: RefTok, graph: str, path: str | Path, dynamo: bool = True, opset: int = OPSET) -> Path:
    """Export ``graph`` ('encoder' or 'decoder') of ``model`` to ``path``; returns the path.

    The file appears only when complete (temp file + rename).
    """
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; expected one of {sorted(GRAPHS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = GRAPHS[graph](model.eval())
    inputs = example_inputs(model, graph)
    in_specs, out_specs = INPUTS[graph], OUTPUTS[graph]
    names = dict(input_names=[s.name for s in in_specs], output_names=[s.name for s in out_specs])
    if dynamo:
        _quiet_torchvision_notice()
        axes = _dynamic_axes(in_specs, model)
        dynamic = dict(dynamic_shapes={name: axes[name] for name in names["input_names"]})
    else:
        dynamic = dict(dynamic_axes=_dynamic_axes(in_specs + out_specs, model))
    with AtomicFile(path) as out:
        tmp = str(out.tmp)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            extra = {"external_data": False} if dynamo else {}
            torch.onnx.export(module, inputs, tmp, dynamo=dynamo, opset_version=opset, **names, **dynamic, **extra)
        proto = strip_exporter_metadata(inline_identity_initializers(fold_weights(onnx.load(tmp))))
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)
    return path

# Larger than any weight a RefTok config may ask for (CONFIG_LIMITS: 1024 x 1024 x 12 x 12).
WEIGHT_FOLD_LIMIT = 1 << 28


def fold_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every computation on weights alone into an initializer, in place, and drop what is left unused.

    The model computes some conv weights from its parameters (a conv over a pixel unshuffle read as one
    strided conv, a conv over a Concat split per part): runtimes, quantisers and TensorRT want Conv weights
    constant. The dynamo exporter folds only tensors under 8192 elements; this folds them all.
    """
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(proto, input_size_limit=WEIGHT_FOLD_LIMIT, output_size_limit=WEIGHT_FOLD_LIMIT)
    onnxscript.optimizer.remove_unused_nodes(proto)
    return proto


def strip_exporter_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node debug records (source stack traces with this machine's paths,
    FX node text, function addresses) from ``proto`` in place; the graph itself is unchanged.

    They hold process-specific values (``<function sym_float at 0x7f...>``), so without this the
    same checkpoint exported twice gave different bytes, and a different calibration-cache digest.
    """
    def strip(graph: onnx.GraphProto) -> None:
        del graph.metadata_props[:]
        for values in (graph.input, graph.output, graph.value_info):
            for value in values:
                del value.metadata_props[:]
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    strip(attribute.g)
                for sub in attribute.graphs:
                    strip(sub)

    strip(proto.graph)
    return proto


def inline_identity_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``Identity(initializer)`` with a copy of the initializer.

    The TorchScript exporter shares equal weights through Identity nodes; quantisers then
    see a computed tensor instead of a weight, and TensorRT wants Conv weights constant.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return proto
