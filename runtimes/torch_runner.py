"""PyTorch eager backend (CPU or CUDA) over a checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reftok_deploy.runtimes.base import Runner


class TorchRunner(Runner):
    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        self.checkpoint = Path(checkpoint)
        self.device = device
        self.model = None
        self.name = f"torch-{device}"

    def load(self) -> None:
        if self.model is not None:
            return
        from reftok_deploy.checkpoint import load_checkpoint
        from reftok_deploy.errors import ReftokError

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ReftokError("--device cuda asked for, but PyTorch sees no CUDA GPU")
        self.model, _ = load_checkpoint(self.checkpoint)
        self.model.to(self.device)
        cfg = self.model.cfg
        self.block_frames, self.temporal_factor, self.spatial_factor = (cfg.block_frames, cfg.temporal_factor,
                                                                        cfg.spatial_factor)

    @torch.inference_mode()
    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.load()
        ref = torch.from_numpy(np.ascontiguousarray(feed["reference"])).to(self.device)
        if graph == "encoder":
            frames = torch.from_numpy(np.ascontiguousarray(feed["frames"])).to(self.device)
            return {"tokens": self.model.encode(ref, frames).cpu().numpy()}
        if graph == "decoder":
            tokens = torch.from_numpy(np.ascontiguousarray(feed["tokens"])).to(self.device)
            return {"reconstruction": self.model.decode(ref, tokens).float().cpu().numpy()}
        raise ValueError(f"unknown graph {graph!r}")

    def close(self) -> None:
        self.model = None
