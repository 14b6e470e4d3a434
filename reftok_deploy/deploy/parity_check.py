"""Parity of one backend against another on real frames: tokens, decoded frames and end-to-end PSNR.

Feeds are GOPs of real frames: ``reference [1,3,S,S]`` and ``frames [1,3,T,S,S]``, float32 in [-1,1].
Every metric is computed for every feed and every failure is collected, never a stop at the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from reftok_deploy.base.gop_plan import plan_gops
from reftok_deploy.base.spec import FRAMES_IN, REFERENCE, Feed, Tolerance, encoder_feed
from reftok_deploy.quality.metrics import clip_psnr
from reftok_deploy.runtimes.runner import Runner


def gop_feeds(clips: dict[str, np.ndarray], block_frames: int, max_gops: int | None = None) -> Iterator[tuple[str, Feed]]:
    """(clip name, encoder feed) for each GOP of uint8 ``[N,S,S,3]`` clips (S a multiple of 8), formed as
    reftok-run and reftok-eval form them (:mod:`reftok_deploy.base.gop_plan`; a short block padded with its last frame)."""
    for name, frames in clips.items():
        for i, gop in enumerate(plan_gops(frames, block_frames)[:max_gops]):
            yield f"{name}#{i}", encoder_feed(gop.reference, gop.padded(block_frames))


@dataclass
class ParityReport:
    baseline: str
    candidate: str
    tolerance: Tolerance
    feeds: int = 0
    token_agreement: float = 1.0
    max_abs_frames: float = 0.0
    mean_abs_frames: float = 0.0
    psnr_baseline: float = 0.0
    psnr_candidate: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def psnr_delta_db(self) -> float:
        return self.psnr_candidate - self.psnr_baseline

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "candidate": self.candidate, "ok": self.ok, "feeds": self.feeds,
                "token_agreement": self.token_agreement, "decoder_max_abs": self.max_abs_frames,
                "decoder_mean_abs": self.mean_abs_frames, "psnr_baseline_db": self.psnr_baseline,
                "psnr_candidate_db": self.psnr_candidate, "psnr_delta_db": self.psnr_delta_db,
                "tolerance": vars(self.tolerance), "failures": self.failures}


def compare(baseline: Runner, candidate: Runner, feeds: Iterable[tuple[str, Feed]], tolerance: Tolerance) -> ParityReport:
    """Run both runners on every feed.

    - token agreement: encoder outputs of both on the same input;
    - decoder error: both decoders on the *baseline's* tokens (isolates the decoder);
    - end-to-end PSNR: each runner's own encode -> decode against the source frames.
    """
    report = ParityReport(baseline.name, candidate.name, tolerance)
    agree, total, abs_sum, count, psnr_a, psnr_b = 0, 0, 0.0, 0, [], []
    for name, feed in feeds:
        reference, source = feed[REFERENCE.name], feed[FRAMES_IN.name]
        tokens_a = baseline.encode(reference, source)
        tokens_b = candidate.encode(reference, source)
        if tokens_a.shape != tokens_b.shape or tokens_b.dtype != np.int32:
            report.failures.append(f"{name}: tokens {tokens_b.dtype}{tokens_b.shape}, expected int32{tokens_a.shape}")
            continue
        agree += int((tokens_a == tokens_b).sum())
        total += tokens_a.size
        frames_a = baseline.decode(reference, tokens_a)
        frames_b = candidate.decode(reference, tokens_a)
        if not np.isfinite(frames_b).all():
            report.failures.append(f"{name}: {candidate.name} decoded NaN/Inf (overflow?)")
            report.max_abs_frames = float("inf")
            continue
        diff = np.abs(frames_a.astype(np.float64) - frames_b)
        report.max_abs_frames = max(report.max_abs_frames, float(diff.max()))
        abs_sum += float(diff.sum())
        count += diff.size
        psnr_a.append(clip_psnr(source, frames_a))
        own_b = frames_b if np.array_equal(tokens_a, tokens_b) else candidate.decode(reference, tokens_b)
        psnr_b.append(clip_psnr(source, own_b))
        report.feeds += 1
    if report.feeds == 0:
        report.failures.append("no feed was compared")
        report.token_agreement = agree / max(total, 1)
        return report
    report.token_agreement = agree / max(total, 1)
    report.mean_abs_frames = abs_sum / max(count, 1)
    report.psnr_baseline, report.psnr_candidate = float(np.mean(psnr_a)), float(np.mean(psnr_b))
    t = tolerance
    if report.token_agreement < t.min_token_agreement:
        report.failures.append(f"token agreement {report.token_agreement:.5f} < {t.min_token_agreement}")
    if report.mean_abs_frames > t.max_mean_abs_frames:
        report.failures.append(f"decoded frames mean abs error {report.mean_abs_frames:.3g} > {t.max_mean_abs_frames:g}")
    if report.max_abs_frames > t.max_abs_frames:
        report.failures.append(f"decoded frames max abs error {report.max_abs_frames:.3g} > {t.max_abs_frames:g}")
    if abs(report.psnr_delta_db) > t.max_psnr_delta_db:
        report.failures.append(f"end-to-end PSNR differs by {report.psnr_delta_db:+.3f} dB (limit {t.max_psnr_delta_db} dB)")
    return report


def parity_report(deployment, baseline: str, candidate: str, videos: Iterable[str], size: int,
                  max_gops: int | None) -> tuple[ParityReport, int]:
    """reftok-parity: backend ``candidate`` against ``baseline`` on the export of ``deployment`` (a
    :class:`~reftok_deploy.deploy.deployment.Deployment` with its export opened), on ``videos`` (or the
    built-in clips) at ``size`` -> (report, number of clips)."""
    from reftok_deploy.base.spec import TOLERANCES
    from reftok_deploy.base.video import read_video
    from reftok_deploy.model.data import demo_clips
    from reftok_deploy.runtimes.factory import parse_spec

    runners = [deployment.runner(spec) for spec in (baseline, candidate)]
    block = deployment.export.geometry.block_frames
    clips = {str(v): read_video(v, size=size) for v in videos} or demo_clips(size, block_frames=block)
    with runners[0] as a, runners[1] as b:
        report = compare(a, b, gop_feeds(clips, block, max_gops), TOLERANCES[parse_spec(candidate)[1]])
    return report, len(clips)
