"""OpenVINO backend (CPU) over the same exported ONNX graphs (FP32, mixed FP16, INT8 Q/DQ).

Imported lazily; ``pip install 'reftok-deploy[openvino]'``. The inference precision is set
explicitly and recorded in the runner's name: OpenVINO's own default on CPUs with AMX/bf16 is
bf16, which changes results (measured: -6.5 dB end to end while ids were unpacked with float
arithmetic; +0.004 dB since they are looked up in a table). ``hint="bf16"`` asks for it by name and
is refused on a CPU that would only emulate it (:func:`native_bf16`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.runtimes.runner import Runner
from reftok_deploy.base.spec import OUTPUTS, Geometry

PRECISION_HINTS = ("f32", "bf16", "f16")


def native_bf16(device: str = "CPU") -> bool:
    """Whether OpenVINO computes bf16 natively on ``device`` (its OPTIMIZATION_CAPABILITIES list BF16: AVX512-BF16
    or AMX); False where OpenVINO is not installed."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 (not installed, or no such device)
        return False


def int8_float_hint(device: str = "CPU") -> str:
    """Precision of the ops outside the Q/DQ pairs of an INT8 graph: "bf16" where ``device`` has it natively.

    Like TensorRT's INT8 engines, whose unquantised layers run in FP16, the INT8 graph's float parts (the
    convs on pixels and token codes, the cost volume, the warp, the data movement between int8 convs)
    take the fastest float precision: on a 2-core Xeon with AMX, shipped model, 256x256, one GOP took
    108.7 ms with them at f32 and 71.5 ms at bf16 against onnxruntime INT8's 211.9 ms in one timing
    script (reftok-bench, other runs: 1.97x and 2.41x onnxruntime INT8), and box.mp4's first 3 GOPs
    decoded at 36.42 dB against 36.43 (FP32 graphs at f32: 36.43). Token ids stay exact: they are
    looked up in a constant codebook (every id is checked under this hint in tests/test_calibration.py).
    """
    return "bf16" if native_bf16(device) else "f32"


class OpenVinoRunner(Runner):
    """Runs ``{graph}.{precision}.onnx`` files with OpenVINO on ``device`` (CPU) at ``hint`` precision;
    ``quantised``: they are INT8 Q/DQ graphs, rewritten at load time for OpenVINO (:meth:`_read`);
    ``pin_threads=False`` lets the OS move its threads between cores: OpenVINO pins them by default, and two
    runners of one thread each were then pinned to the same core (0.7x one runner of two threads, 1.3x
    without pinning, on the 2-core Xeon)."""

    def __init__(self, files: dict[str, str | Path], geometry: Geometry, hint: str = "f32", device: str = "CPU",
                 threads: int | None = None, name: str | None = None, quantised: bool = False,
                 pin_threads: bool = True) -> None:
        super().__init__(geometry)
        if hint not in PRECISION_HINTS:
            raise ReftokError(f"unknown OpenVINO precision hint {hint!r}; use one of {', '.join(PRECISION_HINTS)}")
        self.files = {g: Path(p) for g, p in files.items()}
        self.hint, self.device, self.threads, self.quantised = hint, device, threads, quantised
        self.pin_threads = pin_threads
        self.compiled: dict = {}
        self.name = name or f"openvino-{hint}"

    def load(self) -> None:
        if self.compiled:
            return
        try:
            import openvino as ov
        except ImportError:
            raise ReftokError("OpenVINO is not installed: pip install 'reftok-deploy[openvino]'") from None
        if self.hint == "bf16" and not native_bf16(self.device):
            raise ReftokError(f"OpenVINO has no native bf16 on this {self.device} (needs AVX512-BF16 or AMX): "
                              "use openvino:fp32")
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": self.hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if not self.pin_threads:
            config["ENABLE_CPU_PINNING"] = False
        compiled = {}
        for graph, path in self.files.items():
            try:
                compiled[graph] = core.compile_model(self._read(core, Path(path)), self.device, config)
            except Exception as exc:
                raise ReftokError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        self.compiled = compiled

    def _read(self, core, path: Path):
        """The ONNX file as an OpenVINO model; an INT8 graph with its skip connections read in float
        (:func:`reftok_deploy.runtimes.openvino_graphs.float_skip_connections`)."""
        if not self.quantised:
            return core.read_model(str(path))
        import onnx

        from reftok_deploy.runtimes.openvino_graphs import float_skip_connections

        model, _ = float_skip_connections(onnx.load(str(path)))
        return core.read_model(model.SerializeToString(), b"")

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.compiled[graph]
        results = model(feed)
        # by position: OpenVINO may name an output after the tensor behind a final Identity
        return {spec.name: np.asarray(results[output]) for spec, output in zip(OUTPUTS[graph], model.outputs)}

    def close(self) -> None:
        self.compiled = {}
