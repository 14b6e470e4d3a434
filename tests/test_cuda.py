"""CUDA paths of the PyTorch runtime and of training; they run only where PyTorch sees a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to PyTorch")]


def test_torch_runner_on_cuda_matches_cpu(tiny_checkpoint, real_clip):
    from reftok_deploy.runtimes.torch_runner import TorchRunner

    rng = np.random.default_rng(0)
    reference = rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    frames = np.clip(reference[:, :, None] + rng.normal(0, 0.1, (1, 3, 8, 64, 64)), -1, 1).astype(np.float32)
    with TorchRunner(tiny_checkpoint, "cpu") as cpu, TorchRunner(tiny_checkpoint, "cuda") as gpu:
        tokens_cpu, tokens_gpu = cpu.encode(reference, frames), gpu.encode(reference, frames)
        assert (tokens_cpu == tokens_gpu).mean() >= 0.99
        decoded_cpu, decoded_gpu = cpu.decode(reference, tokens_cpu), gpu.decode(reference, tokens_cpu)
    # cuDNN may use TF32 convolutions: agreement to a few 1e-3 on [-1,1], not bit for bit
    assert np.abs(decoded_cpu - decoded_gpu).max() < 2e-2


def test_training_on_cuda_with_workers_saves_a_cpu_loadable_checkpoint(tmp_path, video_file):
    from reftok_deploy.model.checkpoint import load_checkpoint
    from reftok_deploy.model.reftok import PRESETS
    from reftok_deploy.model.training import Recipe, train

    recipe = Recipe(steps=4, batch=2, crop=64, warmup=1, checkpoint_every=2, builtin_stills=False)
    folder = train(PRESETS["tiny"], [str(video_file)], tmp_path / "run", recipe, progress=False,
                   device="cuda", workers=2)
    model, config = load_checkpoint(folder)
    assert config["training"]["step"] == 4 and "cpu" not in config["training"]["device"]
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())
    resumed = train(PRESETS["tiny"], [str(video_file)], tmp_path / "run", Recipe(**{**recipe.__dict__, "steps": 6}),
                    resume=True, progress=False, device="cuda", workers=0)
    assert load_checkpoint(resumed)[1]["training"]["step"] == 6
