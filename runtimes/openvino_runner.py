"""OpenVINO backend (CPU) over the same exported ONNX graphs (FP32, mixed FP16, INT8 Q/DQ).

Imported lazily; ``pip install 'reftok-deploy[openvino]'``. The inference precision is set
explicitly and recorded in the runner's name: OpenVINO's own default on CPUs with AMX/bf16 is
bf16, which changes results (measured: -6.5 dB end to end before ids were unpacked by lookup).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reftok_deploy.errors import ReftokError
from reftok_deploy.runtimes.base import Runner
from reftok_deploy.spec import OUTPUTS, Geometry

PRECISION_HINTS = ("f32", "bf16", "f16")


class OpenVinoRunner(Runner):
    """Runs ``{graph}.{precision}.onnx`` files with OpenVINO on ``device`` (CPU) at ``hint`` precision."""

    def __init__(self, files: dict[str, str | Path], geometry: Geometry, hint: str = "f32", device: str = "CPU",
                 threads: int | None = None, name: str | None = None) -> None:
        super().__init__(geometry)
        if hint not in PRECISION_HINTS:
            raise ReftokError(f"unknown OpenVINO precision hint {hint!r}; use one of {', '.join(PRECISION_HINTS)}")
        self.files = {g: Path(p) for g, p in files.items()}
        self.hint, self.device, self.threads = hint, device, threads
        self.compiled: dict = {}
        self.name = name or f"openvino-{hint}"

    def load(self) -> None:
        if self.compiled:
            return
        try:
            import openvino as ov
        except ImportError:
            raise ReftokError("OpenVINO is not installed: pip install 'reftok-deploy[openvino]'") from None
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": self.hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        compiled = {}
        for graph, path in self.files.items():
            try:
                compiled[graph] = core.compile_model(core.read_model(str(path)), self.device, config)
            except Exception as exc:
                raise ReftokError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        self.compiled = compiled

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.compiled[graph]
        results = model(feed)
        # by position: OpenVINO may name an output after the tensor behind a final Identity
        return {spec.name: np.asarray(results[output]) for spec, output in zip(OUTPUTS[graph], model.outputs)}

    def close(self) -> None:
        self.compiled = {}
