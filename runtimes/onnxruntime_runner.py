"""ONNX Runtime backend over an export folder (manifest.json + encoder/decoder ONNX files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reftok_deploy.runtimes.base import Runner

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}


def _has_qdq(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: let onnxruntime report it
        return False
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


class OnnxRuntimeRunner(Runner):
    """Runs ``{graph}.{precision}.onnx`` files; ``provider`` is 'cpu', 'cuda' or 'tensorrt'."""

    def __init__(self, files: dict[str, str | Path], provider: str = "cpu", threads: int | None = None,
                 name: str | None = None) -> None:
        self.files = {g: Path(p) for g, p in files.items()}
        self.provider = provider
        self.threads = threads
        self.sessions: dict = {}
        self.name = name or f"onnxruntime-{provider}"
        self.optimized_model_path: Path | None = None  # set to save ONNX Runtime's optimised graph (inspection)

    def load(self) -> None:
        if self.sessions:
            return
        import onnxruntime as ort

        from reftok_deploy.errors import ReftokError

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
                disabled = ["CommonSubexpressionElimination"] if _has_qdq(path) else None
                self.sessions[graph] = ort.InferenceSession(str(path), options, providers=[wanted],
                                                            disabled_optimizers=disabled)
            except Exception as exc:
                raise ReftokError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from None

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.load()
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        inputs = {i.name: np.ascontiguousarray(feed[i.name]) for i in session.get_inputs()}
        return dict(zip(names, session.run(names, inputs)))

    def close(self) -> None:
        self.sessions = {}
