"""Backend specs ('torch', 'onnxruntime:fp32', 'openvino:int8', 'tensorrt:fp16', ...) -> Runner instances."""

from __future__ import annotations

from pathlib import Path

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.machine import usable_cores
from reftok_deploy.runtimes.runner import Runner
from reftok_deploy.base.manifest import ExportFolder
from reftok_deploy.base.spec import GRAPH_NAMES

ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch", "ov": "openvino"}
BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


def parse_spec(spec: str) -> tuple[str, str]:
    """'onnxruntime:fp16' -> ('onnxruntime', 'fp16'); 'torch' -> ('torch', 'fp32'). 'openvino:bf16' is
    OpenVINO computing the FP32 graphs in bfloat16 (a runtime precision: the export has no bf16 file)."""
    backend, _, precision = spec.partition(":")
    backend = ALIASES.get(backend, backend)
    precision = precision or ("fp32" if backend != "tensorrt" else "fp16")
    allowed = ("fp32", "fp16", "int8", "bf16") if backend == "openvino" else ("fp32", "fp16", "int8")
    if backend not in BACKENDS or precision not in allowed or (backend == "torch" and precision != "fp32"):
        raise ReftokError(f"unknown backend {spec!r}: use torch, onnxruntime:fp32|fp16|int8, "
                          "openvino:fp32|fp16|int8|bf16 or tensorrt:fp32|fp16|int8")
    return backend, precision


def backend_label(spec: str, device: str = "cpu") -> str:
    """One name per way of running the model, for .rtok headers and cache keys: 'onnxruntime:fp32',
    'torch:fp32@cuda' (PyTorch's device matters; the exported runtimes pick theirs), 'openvino:int8+bf16'
    (its float ops in bf16 on this CPU). Compared as strings, never parsed back into a spec."""
    backend, precision = parse_spec(spec)
    label = f"{backend}:{precision}" + (f"@{device}" if backend == "torch" and device != "cpu" else "")
    if backend == "openvino" and precision == "int8":
        from reftok_deploy.runtimes.openvino_runner import int8_float_hint

        label += "+bf16" if int8_float_hint() == "bf16" else ""
    return label


def _same_checkpoint(export: ExportFolder, checkpoint: str | Path | None) -> None:
    """Refuse an export made from another checkpoint than the one the run is labelled with."""
    if checkpoint is None:
        return
    from reftok_deploy.model.checkpoint import weights_sha256

    if export.checkpoint_sha256 != weights_sha256(checkpoint):
        raise ReftokError(f"{export.path} was exported from another checkpoint than {checkpoint}: re-export, or pass "
                          "the matching --checkpoint")


def make_runners(spec: str, export: ExportFolder | None, checkpoint: str | Path | None, device: str = "cpu",
                 threads: int | None = None, streams: int = 1) -> list[Runner]:
    """``streams`` runners of ``spec`` (built, not loaded) that encode and decode GOPs side by side, the
    threads shared out among them (``threads``, or the cores this process may use; the first copies get
    one more where they do not divide evenly). On CPUs only: one GPU runs one GOP at a time here."""
    if streams == 1:
        return [make_runner(spec, export, checkpoint, device=device, threads=threads)]
    check_streams(streams, spec, device, threads)
    total = threads or usable_cores()
    shares = [total // streams + (i < total % streams) for i in range(streams)]
    return [make_runner(spec, export, checkpoint, device=device, threads=max(1, share), pin_threads=False)
            for share in shares]


def check_streams(streams: int, spec: str, device: str, threads: int | None) -> None:
    """Raise one ReftokError line unless ``streams`` copies of ``spec`` can run side by side: CPU
    backends only, and at least one thread each."""
    if streams == 1:
        return
    if device != "cpu" or (spec != "auto" and parse_spec(spec)[0] == "tensorrt"):
        where = f"--device {device}" if device != "cpu" else spec
        raise ReftokError(f"--streams {streams} runs copies of the model side by side on CPU cores; {where} "
                          "takes --streams 1")
    if threads is not None and threads < streams:
        raise ReftokError(f"--streams {streams} needs at least one thread per copy: --threads {threads} is fewer")


def refining_backend(spec: str) -> str:
    """The backend that searches tokens against the decoder (``--refine-steps``): torch, also for ``auto``;
    one error line for any other ``spec``."""
    if spec != "auto" and parse_spec(spec)[0] != "torch":  # aliases and torch:fp32 are torch too
        raise ReftokError(f"--refine-steps searches tokens through the PyTorch decoder: backend {spec} cannot; "
                          "use --backend torch")
    return "torch"


def make_runner(spec: str, export: ExportFolder | None, checkpoint: str | Path | None,
                device: str = "cpu", threads: int | None = None, pin_threads: bool = True,
                refine_steps: int = 0) -> Runner:
    """Build (not load) the runner for ``spec`` from an export opened once (:func:`open_export`).
    ``pin_threads=False``: the runtime must not pin its threads to cores (several runners side by side).
    ``refine_steps``: the torch backend's token search against the decoder (see TorchRunner); others refuse it."""
    if refine_steps:
        refining_backend(spec)
    backend, precision = parse_spec(spec)
    if backend == "torch":
        from reftok_deploy.runtimes.torch_runner import TorchRunner

        if checkpoint is None:
            raise ReftokError("the torch backend needs a checkpoint")
        return TorchRunner(checkpoint, device=device, threads=threads, refine_steps=refine_steps)
    if export is None:
        raise ReftokError(f"backend {spec} needs an export folder (run reftok-export first)")
    from reftok_deploy.base.spec import MODEL_VERSIONS

    _same_checkpoint(export, checkpoint)
    graph_precision = "fp32" if precision == "bf16" else precision
    if backend == "tensorrt":
        from reftok_deploy.runtimes.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(export, precision)
    from reftok_deploy.runtimes.onnxruntime_runner import OnnxRuntimeRunner

    files = {}
    for graph in GRAPH_NAMES:
        path = export.artifact(graph, graph_precision)
        if path is None:
            flag = {"fp16": "--fp16", "int8": "--int8 --calib-data ..."}.get(graph_precision, "")
            raise ReftokError(f"{export.path} has no {graph_precision} {graph}: re-run reftok-export {flag}".rstrip())
        version = export.onnx_version(graph, graph_precision)  # read when the folder was opened
        if version not in MODEL_VERSIONS:  # open_export checked it against the manifest
            raise ReftokError(f"{path} is an ONNX of model version {version}; this reftok-deploy runs "
                              f"versions {', '.join(map(str, MODEL_VERSIONS))}: re-export it")
        files[graph] = path
    if backend == "openvino":
        from reftok_deploy.runtimes.openvino_runner import OpenVinoRunner, int8_float_hint

        # The graph holds the precision (FP32, mixed FP16, Q/DQ INT8) and OpenVINO computes at f32, so its own
        # bf16 default cannot change results, except where bf16 is asked for by name (openvino:bf16) and in
        # an INT8 graph's float ops on a CPU with native bf16 (see int8_float_hint); the name says which.
        hint = int8_float_hint() if precision == "int8" else "bf16" if precision == "bf16" else "f32"
        name = f"openvino-{precision}" + ("-bf16" if precision == "int8" and hint == "bf16" else "")
        return OpenVinoRunner(files, export.geometry, hint=hint, threads=threads, name=name,
                              quantised=precision == "int8", pin_threads=pin_threads)
    # --device cuda / tensorrt select onnxruntime's CUDA or TensorRT execution provider.
    provider = {"cuda": "cuda", "tensorrt": "tensorrt"}.get(device.split(":")[0], "cpu")
    runner = OnnxRuntimeRunner(files, provider=provider, threads=threads, name=f"onnxruntime-{precision}")
    if runner.geometry != export.geometry:
        raise ReftokError(f"{export.path}: its graphs' geometry {runner.geometry} does not match its manifest")
    return runner
