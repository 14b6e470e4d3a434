"""OpenVINO backend (CPU) over the same exported ONNX graphs (FP32, mixed FP16, INT8 Q/DQ).

Imported lazily; ``pip install 'reftok-deploy[openvino]'``. The inference precision is set
explicitly and recorded in the runner's name: OpenVINO's own default on CPUs with AMX/bf16 is
bf16, which changes results (measured: -6.5 dB end to end while ids were unpacked with float
arithmetic; +0.004 dB since they are looked up in a table). ``hint="bf16"`` asks for it by name and
is refused on a CPU that would only emulate it (:func:`native_bf16`). INT8 graphs are read as a load-time
self-test of OpenVINO's int8 conv against exact integer arithmetic says (:func:`int8_self_test`): as
exported, rewritten around the faults it found (AMD EPYC Zen 4: issue 30), or refused with one line.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Int8Check:
    """What :func:`int8_self_test` found on one device: the worst error, in accumulator units (one int8 x int8
    product step of the output channel), of OpenVINO's int8 conv against exact integer arithmetic, on each probe
    of :func:`reftok_deploy.runtimes.openvino_graphs.int8_conv_probe`: a plain float input (``plain``), a Concat
    of two (``concat``), an input quantised before a ReLU6 (``activation``), and the worst of the last two with
    :func:`load_time_rewrites` applied (``rewritten``)."""

    device: str
    cpu: str
    plain: float
    concat: float
    activation: float
    rewritten: float

    # The probes' accumulators reach 1.1e6 to 2.3e6 units; float32 dequantisation, or a runtime computing the
    # conv in float (onnxruntime does for this graph: 3.4 units), stays within 1e-5 of that. The faults seen
    # were 4.6e4 units and more.
    ALLOWED = 16.0

    @property
    def verdict(self) -> str:
        """What to do with an INT8 graph here: ``ok``, run it as exported; ``rewrite``, run it with
        :func:`load_time_rewrites`, which make the wrong probes right; ``refuse``, OpenVINO's int8 convs are
        wrong here (the plain probe, or a probe the rewrites do not fix)."""
        if self.plain <= self.ALLOWED and max(self.concat, self.activation) <= self.ALLOWED:
            return "ok"
        return "rewrite" if self.plain <= self.ALLOWED and self.rewritten <= self.ALLOWED else "refuse"

    def refusal(self) -> str:
        """The one-line reason ``openvino:int8`` is refused here."""
        worst = max(self.plain, self.rewritten)
        found = "fails to run" if not np.isfinite(worst) else f"is off by {worst:.0f} integer steps from exact arithmetic"
        floats = "openvino:fp32 or openvino:bf16" if native_bf16(self.device) else "openvino:fp32"
        return (f"OpenVINO's int8 convolutions are wrong on this {self.device} ({self.cpu}): a load-time self-test "
                f"of one quantised conv {found}; use onnxruntime:int8 or {floats}")


def load_time_rewrites(model, rewrite: bool = False):
    """(``model``, {rewrite: count}): an INT8 graph as OpenVINO reads it: skip connections of float convs read in
    float always; with ``rewrite`` (the self-test's verdict here), also quantised before its concats and without
    the Q/DQ pairs no int8 op reads (:mod:`reftok_deploy.runtimes.openvino_graphs`)."""
    from reftok_deploy.runtimes import openvino_graphs as graphs

    model, skips = graphs.float_skip_connections(model)
    done = {"float_skip_connections": skips}
    if rewrite:
        model, counts = _fault_rewrites(model)
        done.update(counts)
    return model, done


def _fault_rewrites(model):
    """The rewrites of a ``rewrite`` verdict (the self-test runs its probes through these alone)."""
    from reftok_deploy.runtimes import openvino_graphs as graphs

    model, concats = graphs.quantise_concat_inputs(model)
    model, pairs = graphs.float_reads_of_float_tensors(model)
    return model, {"quantise_concat_inputs": concats, "float_reads_of_float_tensors": pairs}


def _probe_error(core, model, feed: dict, exact: np.ndarray, unit: np.ndarray, device: str) -> float:
    """Worst error of OpenVINO's output for ``model`` against ``exact``, in accumulator units; inf where it
    cannot compile or run it."""
    try:
        compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), device,
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        got = np.asarray(compiled(feed)[compiled.outputs[0]], dtype=np.float64)
    except Exception:  # noqa: BLE001 (a probe OpenVINO cannot compile or run: no int8 conv here)
        return float("inf")
    if got.shape != exact.shape or not np.isfinite(got).all():
        return float("inf")
    return float((np.abs(got - exact) / unit[None, :, None, None]).max())


@functools.lru_cache(maxsize=None)
def int8_self_test(device: str = "CPU") -> Int8Check:
    """Run OpenVINO's int8 conv on ``device`` against exact integer arithmetic, once per process (three
    one-conv probes, :func:`reftok_deploy.runtimes.openvino_graphs.int8_conv_probe`, and the two rewritten where
    either is wrong; 0.6 s on a 2-core EPYC, 0.4 s where no rewrite is needed).

    Measured with OpenVINO 2026.4 on an AMD EPYC (Zen 4, AVX512-VNNI, no AMX): plain 0.08 units, concat
    1.3e5, activation 4.6e4, both rewritten within 0.19: openvino:int8 runs there rewritten. Limited to AVX2
    or AVX512 without VNNI (``ONEDNN_MAX_CPU_ISA``) the plain probe saturates (1.2e6): refused. Where every
    probe is exact (issue 30: openvino:int8 passed parity on a Xeon with AMX; not re-measured since) the
    graphs run as exported."""
    import openvino as ov

    from reftok_deploy.runtimes.openvino_graphs import int8_conv_probe

    core = ov.Core()
    try:
        cpu = str(core.get_property(device, "FULL_DEVICE_NAME"))
    except Exception:  # noqa: BLE001 (a device without the property)
        cpu = "unknown"

    def error(kind: str, rewrite: bool = False) -> float:
        model, feed, exact, unit = int8_conv_probe(kind)
        if rewrite:
            model, _ = _fault_rewrites(model)
        return _probe_error(core, model, feed, exact, unit, device)

    plain, concat, activation = error("plain"), error("concat"), error("activation")
    rewritten = max(concat, activation)
    if rewritten > Int8Check.ALLOWED:
        rewritten = max(error("concat", rewrite=True), error("activation", rewrite=True))
    return Int8Check(device, cpu, plain, concat, activation, rewritten)


class OpenVinoRunner(Runner):
    """Runs ``{graph}.{precision}.onnx`` files with OpenVINO on ``device`` (CPU) at ``hint`` precision;
    ``quantised``: they are INT8 Q/DQ graphs, rewritten at load time for OpenVINO (:meth:`_read`) as its
    self-test on ``device`` says (:func:`int8_self_test`; refused with one line where no rewrite helps);
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
        self.int8_check: Int8Check | None = None  # set by load() for a quantised runner
        self.rewrites: dict[str, dict[str, int]] = {}  # graph -> rewrite -> count, as load() applied them

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
        if self.quantised:
            self.int8_check = int8_self_test(self.device)
            if self.int8_check.verdict == "refuse":
                raise ReftokError(self.int8_check.refusal())
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": self.hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if not self.pin_threads:
            config["ENABLE_CPU_PINNING"] = False
        compiled = {}
        for graph, path in self.files.items():
            try:
                compiled[graph] = core.compile_model(self._read(core, Path(path), graph), self.device, config)
            except Exception as exc:
                raise ReftokError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        self.compiled = compiled

    def _read(self, core, path: Path, graph: str = ""):
        """The ONNX file as an OpenVINO model; an INT8 graph rewritten as :func:`load_time_rewrites` says for
        this device's self-test (skip connections of float convs read in float everywhere)."""
        if not self.quantised:
            return core.read_model(str(path))
        import onnx

        rewrite = self.int8_check is not None and self.int8_check.verdict == "rewrite"
        model, self.rewrites[graph or path.name] = load_time_rewrites(onnx.load(str(path)), rewrite)
        return core.read_model(model.SerializeToString(), b"")

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.compiled[graph]
        results = model(feed)
        # by position: OpenVINO may name an output after the tensor behind a final Identity
        return {spec.name: np.asarray(results[output]) for spec, output in zip(OUTPUTS[graph], model.outputs)}

    def close(self) -> None:
        self.compiled = {}
