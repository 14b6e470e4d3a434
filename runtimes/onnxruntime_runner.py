"""ONNX Runtime backend over an export folder (manifest.json + encoder/decoder ONNX files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.runtimes.runner import Runner
from reftok_deploy.base.spec import FRAMES_IN, FRAMES_OUT, INPUTS, TOKENS, Geometry

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}


def _graph_facts(path: Path) -> tuple[bool, dict[str, int]]:
    """(has Q/DQ nodes, the block length and group count the graph fixes) without loading weights.

    From the graph's inputs first (``frames`` dim 2, ``tokens`` dim 1: both exporters fix them),
    then its outputs, then the model config reftok-export records in the metadata.
    """
    import json

    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ReftokError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.output) + list(model.graph.input)}  # inputs last: they win
    facts: dict[str, int] = {}
    for key, name, axis in (("block_frames", FRAMES_IN.name, 2), ("block_frames", FRAMES_OUT.name, 2),
                            ("groups", TOKENS.name, 1)):
        shape = dims.get(name, [])
        if len(shape) > axis and isinstance(shape[axis], int) and shape[axis] > 0:
            facts[key] = shape[axis]
    props = {p.key: p.value for p in model.metadata_props}
    if "reftok.model_config" in props and len(facts) < 2:
        try:
            geometry = Geometry.from_config(json.loads(props["reftok.model_config"]))
            facts = {"block_frames": geometry.block_frames, "groups": geometry.groups, **facts}
        except (ValueError, TypeError, AttributeError, ReftokError):  # not a config object: ignore it
            pass
    facts["inputs"] = sorted(v.name for v in model.graph.input)  # type: ignore[assignment]
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node), facts


def geometry_of_graphs(facts: list[dict[str, int]], where: str) -> Geometry:
    """One geometry from what each graph fixes; graphs that disagree or fix nothing are refused."""
    merged: dict[str, int] = {}
    for fact in facts:
        for key, value in fact.items():
            if merged.setdefault(key, value) != value:
                raise ReftokError(f"{where}: the graphs disagree on {key} ({merged[key]} vs {value})")
    if set(merged) != {"block_frames", "groups"} or merged["block_frames"] % merged["groups"]:
        raise ReftokError(f"{where}: not RefTok graphs (no fixed frames/tokens dims, no recorded model config)")
    return Geometry(block_frames=merged["block_frames"], temporal_factor=merged["block_frames"] // merged["groups"])


class OnnxRuntimeRunner(Runner):
    """Runs ``{graph}.{precision}.onnx`` files; ``provider`` is 'cpu', 'cuda' or 'tensorrt'."""

    def __init__(self, files: dict[str, str | Path], provider: str = "cpu", threads: int | None = None,
                 name: str | None = None) -> None:
        self.files = {g: Path(p) for g, p in files.items()}
        facts = {g: _graph_facts(p) for g, p in self.files.items()}
        for graph, (_, fact) in facts.items():
            wanted = sorted(spec.name for spec in INPUTS.get(graph, ()))
            if fact.pop("inputs") != wanted:
                raise ReftokError(f"{self.files[graph]} is not a RefTok {graph} graph (its inputs are not "
                                  f"{', '.join(wanted)})")
        self._qdq = {g: qdq for g, (qdq, _) in facts.items()}
        super().__init__(geometry_of_graphs([f for _, f in facts.values()], ", ".join(map(str, self.files.values()))))
        self.provider = provider
        self.threads = threads
        self.sessions: dict = {}
        self.name = name or f"onnxruntime-{provider}"
        self.optimized_model_path: Path | None = None  # set to save ONNX Runtime's optimised graph (inspection)

    def load(self) -> None:
        if self.sessions:
            return
        import onnxruntime as ort

        wanted = PROVIDER_ALIASES[self.provider]
        if wanted not in ort.get_available_providers():
            raise ReftokError(f"onnxruntime has no {wanted} here (available: {ort.get_available_providers()})")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # unused-initializer notices from Q/DQ graphs are noise
        # No busy-waiting between runs: spinning threads steal the cores that capture, PyTorch or
        # a second session need (it made round-robin benchmarks read onnxruntime 1.6x too slow).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.optimized_model_path is not None:
            options.optimized_model_filepath = str(self.optimized_model_path)
        for graph, path in self.files.items():
            try:
                # CSE would merge the per-reader Q/DQ copies of INT8 graphs back and leave convs in float
                # (calibration/qdq.py: separate_shared_activation_qdq); FP32/FP16 graphs keep it.
                disabled = ["CommonSubexpressionElimination"] if self._qdq[graph] else None
                self.sessions[graph] = ort.InferenceSession(str(path), options, providers=[wanted],
                                                            disabled_optimizers=disabled)
            except Exception as exc:
                raise ReftokError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph not in self.sessions:
            raise ReftokError(f"{self.name} has no {graph} graph loaded")
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feed)))

    def close(self) -> None:
        self.sessions = {}
