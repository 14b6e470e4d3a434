"""Native TensorRT backend: engines listed in an export manifest, run with Polygraphy's TrtRunner.

Imported lazily; an engine whose cache key (ONNX hash, TensorRT version, GPU, precision,
profile) no longer matches is refused with the command that rebuilds it.
"""

from __future__ import annotations


import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import sha256_file
from reftok_deploy.runtimes.runner import Runner
from reftok_deploy.base.manifest import ExportFolder


class TensorRTRunner(Runner):
    """Engines of an export folder opened once by the caller (geometry from its manifest)."""

    def __init__(self, export: ExportFolder, precision: str = "fp16") -> None:
        super().__init__(export.geometry)
        self.export = export
        self.folder = export.path
        self.precision = precision
        self.name = f"tensorrt-{precision}"
        self.runners: dict = {}

    def load(self) -> None:
        if self.runners:
            return
        from reftok_deploy.base.engines import check_engine, gpu_name, tensorrt_version

        if tensorrt_version() is None:
            raise ReftokError("TensorRT is not installed here: pip install 'reftok-deploy[tensorrt]' on the target")
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        runners: dict = {}
        for graph in ("encoder", "decoder"):
            entry = self.export.engine(graph, self.precision)
            if entry is None:
                raise ReftokError(f"{self.folder} has no {self.precision} TensorRT engine for the {graph}: "
                                  f"run reftok-export --{self.precision} on this machine")
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and "/" not in entry["file"]
                    and isinstance(entry.get("key"), dict)):
                raise ReftokError(f"{self.folder}: the manifest's {graph}.{self.precision} engine entry is malformed")
            path = self.folder / entry["file"]
            # The key of this machine: an engine from another GPU or TensorRT is foreign.
            stale = check_engine(path, dict(entry["key"], tensorrt=tensorrt_version(), gpu=gpu_name()))
            if stale:
                raise ReftokError(f"refusing {path}: {stale}; rebuild with reftok-export --{self.precision}")
            if entry.get("sha256") != sha256_file(path):
                raise ReftokError(f"{path} does not match its sha256 in the manifest: rebuild with reftok-export")
            runner = TrtRunner(EngineFromBytes(BytesFromPath(str(path))))
            runner.activate()
            runners[graph] = runner
        self.runners = runners  # both graphs or neither: a half-loaded runner would look loaded

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.runners[graph].infer(feed)
        return {k: np.asarray(v) for k, v in outputs.items()}

    def close(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()
        self.runners = {}
