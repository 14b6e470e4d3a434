"""CPU pre-flight for TensorRT: find what TensorRT's ONNX parser would reject before reaching a Jetson.

Checks (each failure is collected, none stops the others):
- every op is in TensorRT's supported-operator list (onnx-tensorrt docs/operators.md, TensorRT 10)
  and in the default ONNX domain;
- graph inputs/outputs use types TensorRT binds (no int64, no double);
- strict ONNX shape inference succeeds and every I/O has a known rank;
- Conv/ConvTranspose weights are constants (initializer, Constant or DequantizeLinear of one);
- QuantizeLinear/DequantizeLinear zero points are 0 (TensorRT INT8 is symmetric);
- the opset lies in the range TensorRT parses;
- a floating-point Range has constant start/limit/delta (TensorRT parses no other).
Warnings (reported, not failures): 3-D convolutions, slow on Jetson and without INT8 speed-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# Operators the TensorRT 10 ONNX parser imports (subset relevant to CNN tokenizers plus common glue).
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Identity If
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean Min Mod Mul Neg NonMaxSuppression Not Or Pad Pow PRelu
QuantizeLinear RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize RNN Round ScaledTanh
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample
Where Xor
""".split())
IO_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT32,
            onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL}
OPSET_RANGE = (9, 22)


@dataclass
class PreflightReport:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "errors": self.errors, "warnings": self.warnings}


def _type_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def preflight(model: onnx.ModelProto | str | Path) -> PreflightReport:
    """Run every check on a model (or path); never raises for graph problems, reports them."""
    path = str(model) if not isinstance(model, onnx.ModelProto) else "<model>"
    report = PreflightReport(path)
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model))
        except Exception as exc:  # a corrupt file is a finding, not a crash
            report.errors.append(f"cannot parse ONNX: {exc}")
            return report
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        report.errors.append(f"opset {opset} outside TensorRT's parsed range {OPSET_RANGE}")
    for node in graph.node:
        where = f"node {node.name or '?'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            report.errors.append(f"{where}: custom domain {node.domain!r} needs a TensorRT plugin")
        elif node.op_type not in TENSORRT_OPS:
            report.errors.append(f"{where}: operator not supported by TensorRT's ONNX parser")
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for value in values:
            tensor = value.type.tensor_type
            if tensor.elem_type not in IO_TYPES:
                report.errors.append(f"graph {kind} {value.name} is {_type_name(tensor.elem_type)}: "
                                     "TensorRT binds float32/float16/int32/int8/uint8/bool only")
            if not tensor.HasField("shape"):
                report.errors.append(f"graph {kind} {value.name} has unknown rank")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        report.errors.append(f"shape inference failed: {str(exc).splitlines()[0]}")
    _check_constant_weights(graph, report)
    _check_symmetric_quantization(graph, report)
    _check_float_ranges(model, report)
    return report


def _check_float_ranges(model: onnx.ModelProto, report: PreflightReport) -> None:
    constants, _ = _constants(model.graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # already reported by the strict pass
        return
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.input)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    for node in model.graph.node:
        if node.op_type == "Range" and types.get(node.input[0]) in floats:
            if not all(name in constants for name in node.input):
                report.errors.append(f"node {node.name or '?'} (Range): floating-point Range with computed bounds; "
                                     "TensorRT needs constant bounds (use an integer Range and Cast)")


def _constants(graph: onnx.GraphProto) -> tuple[set[str], dict[str, np.ndarray]]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    names = set(values)
    for node in graph.node:  # topological order: constants propagate through Identity and Q/DQ of weights
        if node.op_type == "Constant":
            names.update(node.output)
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
        elif node.op_type in ("Identity", "QuantizeLinear", "DequantizeLinear") and node.input and node.input[0] in names:
            names.update(node.output)
            if node.op_type == "Identity" and node.input[0] in values:
                values[node.output[0]] = values[node.input[0]]
    return names, values


def _check_constant_weights(graph: onnx.GraphProto, report: PreflightReport) -> None:
    names, values = _constants(graph)
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            if len(node.input) < 2 or node.input[1] not in names:
                report.errors.append(f"node {node.name} ({node.op_type}): weights are not a constant")
            weight = values.get(node.input[1]) if len(node.input) > 1 else None
            if weight is not None and weight.ndim == 5:
                report.warnings.append(f"node {node.name}: 3-D convolution (slow on Jetson, no INT8 speed-up)")


def _check_symmetric_quantization(graph: onnx.GraphProto, report: PreflightReport) -> None:
    _, values = _constants(graph)
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zero = values.get(node.input[2])
            if zero is None or np.any(zero != 0):
                report.errors.append(f"node {node.name} ({node.op_type}): zero point must be a constant 0")
