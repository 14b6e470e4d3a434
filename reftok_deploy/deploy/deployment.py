"""One resolver for every command that runs the model: checkpoint -> export folder -> backend -> runners.

reftok-run, -decode, -bench, -parity, -eval and -tokenize (and a serving command) describe what to run with
the same options (``--checkpoint``, ``--export``, ``--backend``, ``--device``, ``--threads``, ``--streams``);
:class:`Deployment` turns them into opened objects in one place:

- the checkpoint: the one given, else the shipped RefTok (:meth:`Deployment.with_shipped_checkpoint`), or
  the one an export folder records, checked against its weights hash (:meth:`Deployment.with_recorded_checkpoint`);
- the export folder: the one given, opened and checked once (:meth:`Deployment.opened_export`); where none is
  given and the backend needs one (onnxruntime, OpenVINO), the FP32 export of the checkpoint in the user cache
  (:func:`reftok_deploy.deploy.backends.cached_export`), made once;
- ``--backend auto``: the fastest backend that passes parity here, measured at the frames' size
  (:meth:`Deployment.choose_backend`, :func:`reftok_deploy.deploy.backends.auto_backend`);
- the runners (:meth:`Deployment.runner`, :meth:`Deployment.runners`; built, not loaded).

Importing this module does not import torch (``--help`` stays fast); the checkpoint helpers load it when used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.manifest import ExportFolder, open_export
from reftok_deploy.deploy import backends
from reftok_deploy.runtimes import factory
from reftok_deploy.runtimes.runner import Runner

# Backends whose runner reads the ONNX graphs of an export folder (TensorRT reads engines, which the cached
# export has none of: it still needs --export).
READS_ONNX = ("onnxruntime", "openvino")


def _quiet(_: str) -> None:
    pass


def shipped_checkpoint(twin: bool = False) -> str:
    """The shipped RefTok checkpoint folder (or its twin's)."""
    from reftok_deploy.model.checkpoint import default_checkpoint as shipped

    return str(shipped(twin=twin))


@dataclass(frozen=True)
class RemoteConfig:
    """The fields of a model config a client needs (GOP length, token geometry, codebook), from a server."""

    block_frames: int
    temporal_factor: int
    spatial_factor: int
    fsq_levels: tuple[int, ...]
    model_version: int


@dataclass
class Deployment:
    """What to run and where, from the options every command shares; resolved step by step, so that a
    command can check its paths (an OutputPlan) and open its source between the steps."""

    checkpoint: str | None = None
    export_folder: str | None = None
    backend: str = "auto"
    device: str = "cpu"
    threads: int | None = None
    streams: int = 1
    say: Callable[[str], None] = field(default=_quiet, repr=False)
    server: str | None = None  # a reftok-serve URL: the model runs there (checkpoint, export, backend are its own)
    token: str | None = field(default=None, repr=False)  # the server's bearer token
    export: ExportFolder | None = field(default=None, init=False)
    _server_model: dict[str, Any] | None = field(default=None, init=False, repr=False)
    why: str | None = field(default=None, init=False)  # why --backend auto chose the backend

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)
        if self.export_folder is not None:
            self.export_folder = str(self.export_folder)

    def check_streams(self, backend: str | None = None) -> None:
        """One error line unless ``streams`` copies of the backend can run side by side (before any work)."""
        factory.check_streams(self.streams, backend or self.backend, self.device, self.threads)

    # -- a remote model -------------------------------------------------------------------------------------
    def server_model(self) -> dict[str, Any]:
        """GET /v1/model of the server, asked once (geometry, FSQ levels, checkpoint hash, backend)."""
        if self._server_model is None:
            self._server_model = self.remote_client().model()
        return self._server_model

    def remote_client(self):
        """A client of the server (one per stream: each holds its own connection); where a checkpoint was given,
        every request carries its hash and a server running another one refuses (409)."""
        from reftok_deploy.runtimes.remote import ServerClient

        return ServerClient(self.server, token=self.token,
                            checkpoint_sha256=self.weights_sha256() if self.checkpoint is not None else None)

    # -- the checkpoint -------------------------------------------------------------------------------------
    def with_shipped_checkpoint(self) -> "Deployment":
        """The shipped RefTok where no checkpoint was given (none with --server: the server's is used)."""
        if self.checkpoint is None and self.server is None:
            self.checkpoint = shipped_checkpoint()
        return self

    def with_recorded_checkpoint(self, verify: bool = False) -> "Deployment":
        """Where no checkpoint was given, the one the export folder records (opened first); ``verify``: its
        weights must still be the ones exported."""
        if self.checkpoint is not None:
            return self
        export = self.opened_export()
        path = export.checkpoint_path if export is not None else None
        if path is None:
            raise ReftokError(f"{self.export_folder}: its manifest records no checkpoint path: pass --checkpoint")
        if verify:
            from reftok_deploy.base.files import sha256_file
            from reftok_deploy.model.checkpoint import WEIGHTS

            try:
                matches = sha256_file(Path(path) / WEIGHTS) == export.checkpoint_sha256
            except OSError:
                raise ReftokError(f"the checkpoint recorded in the manifest is gone ({path}): pass --checkpoint") from None
            if not matches:
                raise ReftokError(f"{path} changed since the export: pass --checkpoint or re-export")
        self.checkpoint = path
        return self

    def config(self):
        """The checkpoint's model config (:class:`RefTokConfig`), read without its weights (with --server: the
        server's, from its /v1/model)."""
        from reftok_deploy.model.checkpoint import config_from_checkpoint, read_config

        if self.server is not None:
            model = self.server_model()
            try:
                return RemoteConfig(int(model["block_frames"]), int(model["temporal_factor"]),
                                    int(model["spatial_factor"]), tuple(int(v) for v in model["fsq_levels"]),
                                    int(model["model_version"]))
            except (KeyError, TypeError, ValueError):
                raise ReftokError(f"{self.server}/v1/model does not describe a model; is this a reftok-serve "
                                  "server?") from None

        return config_from_checkpoint(read_config(self.checkpoint), self.checkpoint)

    def weights_sha256(self) -> str:
        from reftok_deploy.model.checkpoint import weights_sha256

        if self.checkpoint is None and self.server is not None:
            return str(self.server_model()["checkpoint_sha256"])
        return weights_sha256(self.checkpoint)

    def load_model(self):
        """The checkpoint's RefTok (torch), where the model itself is needed (reftok-bench's FLOP count)."""
        from reftok_deploy.model.checkpoint import load_checkpoint

        return load_checkpoint(self.checkpoint)[0]

    # -- the export folder ----------------------------------------------------------------------------------
    def opened_export(self) -> ExportFolder | None:
        """The --export folder, read, checked and hashed once (None where none was given)."""
        if self.export is None and self.export_folder is not None:
            self.export = open_export(self.export_folder)
        return self.export

    # -- the backend ----------------------------------------------------------------------------------------
    def choose_backend(self, size: tuple[int, int] | None = None) -> str:
        """Resolve ``--backend auto`` (measured at frames of ``size``, height x width; said on ``say``), and
        give an onnxruntime/OpenVINO backend without --export the checkpoint's cached export."""
        if self.server is not None:
            self.backend = str(self.server_model()["backend_spec"])
            return self.backend
        self.opened_export()
        if self.backend == "auto":
            self.backend, self.export, self.why = backends.auto_backend(
                self.export, self.checkpoint, self.device, self.say, threads=self.threads, size=size)
            self.say(f"backend: {self.backend} ({self.why})")
        elif self.export is None and factory.parse_spec(self.backend)[0] in READS_ONNX:
            self.export = backends.cached_export(self.checkpoint, self.say)
        return self.backend

    def use_refining_backend(self) -> None:
        """The backend of a token search against the decoder (``--refine-steps``): torch (also for auto), or one
        error line, before any backend is measured or exported."""
        self.backend = factory.refining_backend(self.backend)

    @property
    def label(self) -> str:
        """The backend's name in .rtok headers and job manifests (:func:`backend_label`; the server's own)."""
        if self.server is not None:
            return str(self.server_model()["backend"])
        return factory.backend_label(self.backend, self.device)

    def codecs(self, held) -> tuple[list[Any], str]:
        """(``streams`` codecs with FrameCodec's interface, entered into the ExitStack ``held``, and their name):
        local runners, or clients of the server."""
        from reftok_deploy.runtimes.codec import FrameCodec
        from reftok_deploy.runtimes.remote import RemoteCodec

        if self.server is not None:
            codecs = [RemoteCodec(self.remote_client()) for _ in range(self.streams)]
            for codec in codecs:
                held.callback(codec.close)
            return codecs, f"{codecs[0].name} ({self.label})"
        runners = [held.enter_context(r) for r in self.runners()]
        return [FrameCodec(r) for r in runners], runners[0].name

    # -- the runners ----------------------------------------------------------------------------------------
    def runner(self, spec: str | None = None, pin_threads: bool = True, refine_steps: int = 0) -> Runner:
        """A runner of ``spec`` (default: the chosen backend), built, not loaded (``refine_steps``: see
        :func:`~reftok_deploy.runtimes.factory.make_runner`)."""
        return factory.make_runner(spec or self.backend, self.export, self.checkpoint, device=self.device,
                                   threads=self.threads, pin_threads=pin_threads, refine_steps=refine_steps)

    def runners(self, spec: str | None = None) -> list[Runner]:
        """``streams`` runners of ``spec`` sharing the threads (:func:`make_runners`), built, not loaded."""
        return factory.make_runners(spec or self.backend, self.export, self.checkpoint, device=self.device,
                                    threads=self.threads, streams=self.streams)

    def try_runner(self, spec: str) -> tuple[Runner | None, str | None]:
        """(loaded runner, None), or (None, one-line reason) where ``spec`` cannot open here (a ReftokError
        at build or load, e.g. a runtime that refuses this CPU): a skipped row, not a crash."""
        runner = None
        try:
            runner = self.runner(spec)
            runner.load()
        except ReftokError as exc:
            if runner is not None:
                runner.close()
            return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return runner, None
