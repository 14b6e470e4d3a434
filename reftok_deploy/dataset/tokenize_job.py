"""reftok-tokenize's work as a library: a corpus expanded into clips, its paths checked, the backend chosen
once by the driver (:class:`~reftok_deploy.deploy.deployment.Deployment`), and the job run on Ray Data
(:func:`reftok_deploy.dataset.ray_tokenize.tokenize_corpus`) -> the dataset manifest."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.paths import OutputPlan
from reftok_deploy.dataset.clip_tokenizer import TokenizeSettings
from reftok_deploy.dataset.corpus import expand_inputs
from reftok_deploy.deploy.deployment import Deployment


@dataclass
class TokenizeJob:
    """reftok-tokenize's options besides the deployment's: where the rows go, how GOPs are formed, where it runs."""

    inputs: list[str]
    output: str
    workers: int | None = None
    num_gpus: float = 0.0
    address: str | None = None
    size: int | None = None
    refresh_blocks: int = 1
    cut_threshold: float | None = None
    max_pixels: int = 0
    rows_per_shard: int = 256
    overwrite: bool = False
    refine_steps: int = 0


def require_ray() -> None:
    """One error line where Ray Data or pyarrow is missing (an optional extra)."""
    try:
        import pyarrow  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        raise ReftokError(f"reftok-tokenize needs Ray Data and pyarrow ({exc.name} is missing): "
                          "pip install 'reftok-deploy[ray]'") from None


def run_tokenize(deployment: Deployment, job: TokenizeJob, on_clip: Callable[[dict[str, Any]], None],
                 clip_count: Callable[[int], None] = lambda _: None) -> dict[str, Any]:
    """Every path checked first (a job stopped part way keeps what it finished: the same command resumes it),
    the backend chosen once (a bad spec fails here, not in Ray), then the job -> the dataset manifest.
    ``clip_count`` is told how many clips the inputs hold before the job starts."""
    from reftok_deploy.dataset.ray_tokenize import check_address, tokenize_corpus

    require_ray()
    check_address(job.address)
    deployment.with_shipped_checkpoint()
    clips = expand_inputs(list(job.inputs))
    plan = OutputPlan()
    for clip in clips:
        plan.reads(clip.source if "://" not in clip.source else None, "the input")
    plan.reads(deployment.checkpoint, "the checkpoint")
    plan.reads(deployment.export_folder, "the export folder")
    plan.folder(job.output, "--output", keep_if=lambda folder: any((folder / "done").glob("*.json")))
    with plan:
        cfg = deployment.config()
        if job.refine_steps:
            deployment.use_refining_backend()
        deployment.choose_backend((job.size or 256, job.size or 256))
        # built, not loaded: a bad spec or a missing precision fails here, not in Ray
        deployment.runner(refine_steps=job.refine_steps)
        export = deployment.export
        settings = TokenizeSettings(out=str(job.output), checkpoint=deployment.checkpoint,
                                    export_folder=None if export is None else str(export.path),
                                    backend=deployment.backend, device=deployment.device, threads=deployment.threads,
                                    size=job.size, refresh_blocks=job.refresh_blocks,
                                    cut_threshold=job.cut_threshold or None, rows_per_shard=job.rows_per_shard,
                                    max_pixels=job.max_pixels, block_frames=cfg.block_frames,
                                    refine_steps=job.refine_steps)
        record = {"format": "reftok-tokens",
                  "checkpoint": {"path": deployment.checkpoint, "weights_sha256": deployment.weights_sha256()},
                  "model": {"model_version": cfg.model_version, "fsq_levels": list(cfg.fsq_levels),
                            "codebook_size": math.prod(cfg.fsq_levels), "block_frames": cfg.block_frames,
                            "temporal_factor": cfg.temporal_factor, "spatial_factor": cfg.spatial_factor},
                  "geometry": {"size": None if job.size is None else [job.size, job.size],
                               "max_pixels": job.max_pixels, "refresh_blocks": job.refresh_blocks,
                               "cut_threshold": job.cut_threshold or None},
                  "backend": deployment.label, "rows_per_shard": job.rows_per_shard, "refine_steps": job.refine_steps}
        clip_count(len(clips))
        return tokenize_corpus(clips, settings, record, job.workers, address=job.address, overwrite=job.overwrite,
                               num_gpus=job.num_gpus, on_clip=on_clip)
