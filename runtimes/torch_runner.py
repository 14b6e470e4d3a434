"""PyTorch eager backend (CPU or CUDA) over a checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reftok_deploy.runtimes.runner import Runner
from reftok_deploy.base.spec import FRAMES_IN, FRAMES_OUT, REFERENCE, TOKENS, Geometry


class TorchRunner(Runner):
    """Runs the checkpoint's model; geometry from its ``config.json``. ``refine_steps`` > 0: each block's tokens
    are searched by that many steps against the decoder (:func:`reftok_deploy.model.latent_refinement.refine_tokens`;
    offline work, the same token format)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", threads: int | None = None,
                 refine_steps: int = 0) -> None:
        from reftok_deploy.model.checkpoint import read_config

        super().__init__(Geometry.from_config(read_config(checkpoint)["model"]))
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.threads = threads  # PyTorch's intra-op threads are per process: set when loaded
        self.model = None
        self.refine_steps = refine_steps
        self.name = f"torch-{device}"

    def load(self) -> None:
        if self.model is not None:
            return
        from reftok_deploy.model.checkpoint import load_checkpoint
        from reftok_deploy.base.errors import ReftokError

        try:
            torch.device(self.device)
        except RuntimeError:
            raise ReftokError(f"unknown --device {self.device!r}; use cpu, cuda or cuda:N") from None
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ReftokError("--device cuda asked for, but PyTorch sees no CUDA GPU")
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model, _ = load_checkpoint(self.checkpoint)
        self.model.to(self.device)

    def _run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph == "encoder" and self.refine_steps:  # gradients through the decoder: not in inference mode
            from reftok_deploy.model.latent_refinement import refine_tokens

            ref, frames = (torch.from_numpy(feed[t.name]).to(self.device) for t in (REFERENCE, FRAMES_IN))
            return {TOKENS.name: refine_tokens(self.model, ref, frames, self.refine_steps).cpu().numpy()}
        return self._infer(graph, feed)

    @torch.inference_mode()
    def _infer(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ref = torch.from_numpy(feed[REFERENCE.name]).to(self.device)
        if graph == "encoder":
            frames = torch.from_numpy(feed[FRAMES_IN.name]).to(self.device)
            return {TOKENS.name: self.model.encode(ref, frames).cpu().numpy()}
        tokens = torch.from_numpy(feed[TOKENS.name]).to(self.device)
        return {FRAMES_OUT.name: self.model.decode(ref, tokens).float().cpu().numpy()}

    def close(self) -> None:
        self.model = None
