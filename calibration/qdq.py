"""INT8 Q/DQ graphs for TensorRT's rules, calibrated with ONNX Runtime's quantisation tools.

Symmetric per-channel QInt8 weights, symmetric QInt8 activations (zero point 0), QDQ
format; the token arithmetic (FSQ bound/round/packing in the encoder, id unpacking in
the decoder), the encoder's cost volume and soft-argmax, the motion warp (its head conv, grid and
GridSample), the first convs on the pixels and on the token codes, and every op between the graph
inputs and the first convs or the outputs are excluded and stay FP32. Tensor ranges are cached as JSON beside the
export, named by a digest of the FP32 graph, the method and the calibration frames, so
a re-export with the same inputs skips calibration.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import atomic_write_bytes
from reftok_deploy.base.graph_regions import (consumers_of, conv_parts, cost_volume_nodes, drop_nodes, input_regions,
                                              sampling_head_convs, token_arithmetic_nodes, topological_sort)

METHODS = ("minmax", "entropy", "percentile")
# Q/DQ goes on these ops only. Leaving the ReLU6 Clips unquantised lets ONNX Runtime fuse
# DQ -> Conv -> Clip -> Q into one int8 conv (measured: INT8 encode+decode 1.8x FP32 on one
# CPU thread, against 1.4x with Q/DQ around every Clip) and matches TensorRT's placement
# (Q/DQ on conv inputs, activations fused into the conv).
QUANTIZED_OPS = ["Conv", "Add", "Concat", "DepthToSpace", "SpaceToDepth", "Reshape", "Transpose", "Gather"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _onnxruntime_chatter_to_debug_log() -> Iterator[None]:
    """ONNX Runtime's calibrators print() their progress ("Collecting tensor data ...",
    "Percentile : (0.01,99.99)", tensor and bin counts) on stdout: keep those lines off the
    console and hand them to this module's logger at DEBUG level (``-v`` shows them).
    Errors are exceptions, not prints, and pass through untouched."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                log.debug("onnxruntime: %s", line)


class FeedReader:
    """ONNX Runtime CalibrationDataReader over a list of feeds (``dict[str, np.ndarray]``)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def cache_digest(fp32: onnx.ModelProto, method: str, feeds: list[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256(fp32.SerializeToString())
    digest.update(method.encode())
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    return digest.hexdigest()


def check_cache(path: Path) -> None:
    """Refuse a calibration cache that is not a JSON object of tensor ranges."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReftokError(f"calibration cache {path} is corrupt ({exc}): delete it to recalibrate") from None
    if not isinstance(data, dict) or not data:
        raise ReftokError(f"calibration cache {path} holds no tensor ranges: delete it to recalibrate")


def quantize_qdq(fp32: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], method: str, cache: Path) -> onnx.ModelProto:
    """Q/DQ INT8 copy of ``fp32`` calibrated on ``feeds`` (or on ranges from an existing ``cache``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise ReftokError(f"unknown calibration method {method!r}; choose one of {METHODS}")
    if cache.exists():
        check_cache(cache)
    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="reftok-qdq-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        # ONNX Runtime writes its cache with mkstemp + rename (mode 0600): it writes a private copy
        # here, and the cache beside the export is written like every other artefact (AtomicFile,
        # umask-following mode).
        ranges = Path(tmp) / "calib.json"
        if cache.exists():
            shutil.copyfile(cache, ranges)  # a private working copy, not an artefact
        # Without the exporter's shape annotations: dynamo writes symbolic dims as expressions of the input
        # sizes (correct), which ONNX Runtime's calibration tooling misreads (seen: the cost volume's matrix
        # products expected 1 tile wide, one warning per product and GOP); the calibrator infers shapes itself.
        source_proto = onnx.ModelProto()
        source_proto.CopyFrom(fp32)
        del source_proto.graph.value_info[:]
        onnx.save(source_proto, str(source))
        # ONNX Runtime prints calibration progress on stdout and advice through logging; keep both off the console.
        root = logging.getLogger()
        level = root.level
        with _onnxruntime_chatter_to_debug_log():  # logs what it caught after the root level is restored
            try:
                root.setLevel(logging.ERROR)
                if method == "entropy" and not ranges.exists():
                    _entropy_ranges(source, feeds, ranges, Path(tmp))
                quantize_static(
                    str(source), str(target), FeedReader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate_method,
                    nodes_to_exclude=float_nodes(fp32),
                    op_types_to_quantize=QUANTIZED_OPS,
                    calibration_cache_path=str(ranges),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "CalibPercentile": 99.99, "CalibMovingAverage": False})
            except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
                raise ReftokError(f"INT8 quantisation failed ({type(exc).__name__}: {exc}); "
                                  f"if {cache.name} is from elsewhere, delete it") from None
            finally:
                root.setLevel(level)
        atomic_write_bytes(cache, ranges.read_bytes())
        return float_convs_read_float(separate_shared_activation_qdq(onnx.load(str(target))), float_nodes(fp32))


def float_nodes(fp32: onnx.ModelProto) -> list[str]:
    """Nodes an INT8 graph leaves unquantised: token arithmetic, cost volume, motion warp head, and the
    convs that read the pixels or the token codes with the ops before them (:func:`input_regions`), each whole
    where the model computes it in parts (:func:`conv_parts`)."""
    paths, convs = input_regions(fp32)
    joins, parts = conv_parts(fp32, convs)
    names = (token_arithmetic_nodes(fp32) + sampling_head_convs(fp32) + cost_volume_nodes(fp32) + paths + convs
             + joins + parts)
    return list(dict.fromkeys(names))


# TensorRT's entropy calibrator settings: a fine histogram, searched for the 128-bin (int8 half range)
# threshold of least KL divergence.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def _entropy_ranges(source: Path, feeds: list[dict[str, np.ndarray]], cache: Path, tmp: Path) -> None:
    """Write entropy-calibrated ranges to ``cache`` for quantize_static to pick up.

    quantize_static (onnxruntime 1.32) does not pass histogram sizes to its entropy
    calibrator, whose defaults (128 bins, 128 quantised bins) leave one candidate threshold,
    the full range: measured here, "entropy" produced byte-identical graphs to "minmax".
    """
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    calibrator = create_calibrator(source, QUANTIZED_OPS, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
                                                  "symmetric": True})
    calibrator.collect_data(FeedReader(feeds))
    save_tensors_data(calibrator.compute_data(), cache)


def float_convs_read_float(model: onnx.ModelProto, kept_float: list[str]) -> onnx.ModelProto:
    """Let each conv that stays float (``kept_float``) read the float tensor behind the Q/DQ pair in front of it,
    dropping that pair (its own, after :func:`separate_shared_activation_qdq`): TensorRT's placement puts Q/DQ on
    the inputs of int8 convs only. The case: a conv computed in parts, whose part on the reference's features is
    kept float because another part reads the pixels, while the features are quantised for the int8 convs that
    also read them."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = consumers_of(graph)
    names, removed = set(kept_float), set()
    for conv in graph.node:
        dq = producer.get(conv.input[0]) if conv.op_type == "Conv" and conv.name in names else None
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or len(consumers[dq.output[0]]) != 1 \
                or len(consumers[q.output[0]]) != 1:
            continue
        conv.input[0] = q.input[0]
        removed |= {id(q), id(dq)}
    drop_nodes(graph, removed)
    return model


def separate_shared_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every consumer of a quantised activation its own QuantizeLinear -> DequantizeLinear pair.

    ONNX Runtime turns DQ -> Conv -> Q into an int8 conv only when the activation's Q feeds a
    single DQ for that conv. A tensor read twice (a residual block's input, reference features
    reused per group) left 6 convs per graph in float, ~30 % of INT8 time. Same scales, so the
    numbers do not change; runners must keep ONNX Runtime's common-subexpression elimination
    from merging the copies back (see ``runtimes/onnxruntime_runner.py``). TensorRT is unaffected.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    added: list[onnx.NodeProto] = []
    for dq in list(graph.node):
        readers = consumers.get(dq.output[0], []) if dq.op_type == "DequantizeLinear" else []
        q = producer.get(dq.input[0]) if readers else None
        if len(readers) < 2 or q is None or q.op_type != "QuantizeLinear":
            continue
        for k, reader in enumerate(readers[1:], 1):
            q_copy, dq_copy = onnx.NodeProto(), onnx.NodeProto()
            q_copy.CopyFrom(q)
            dq_copy.CopyFrom(dq)
            q_copy.name, q_copy.output[0] = f"{q.name}_reader{k}", f"{q.output[0]}_reader{k}"
            dq_copy.name, dq_copy.input[0], dq_copy.output[0] = f"{dq.name}_reader{k}", q_copy.output[0], f"{dq.output[0]}_reader{k}"
            for i, name in enumerate(reader.input):
                if name == dq.output[0]:
                    reader.input[i] = dq_copy.output[0]
            added += [q_copy, dq_copy]
    graph.node.extend(added)
    topological_sort(graph)
    return model
