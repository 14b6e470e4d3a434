"""Pipeline efficiency of reftok-tokenize, measured side by side in one run (the metric Cosmos-Curator reports).

    python -m reftok_deploy.cli.tokenize_bench VIDEO... [--backend auto] [--size 256] [--threads 1]

Prints, on the same clips and backend: (a) the model alone in this process, encoding the GOPs
reftok-tokenize forms from frames decoded beforehand, on all the cores; (b) reftok-tokenize on an embedded
local Ray (frames/s after Ray's start-up, which is printed apart); their ratio; and (c) the same job on a
local Ray cluster of one and of two worker nodes (``ray.cluster_utils.Cluster``, one CPU each).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reftok_deploy.base.files import atomic_write_bytes
from reftok_deploy.base.gop_plan import plan_gops
from reftok_deploy.base.machine import usable_cores
from reftok_deploy.base.video import read_video
from reftok_deploy.deploy.backends import cpu_name
from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.runtimes.codec import FrameCodec

RUN_ON_CLUSTER = """
import sys
from ray.cluster_utils import Cluster
nodes = int(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
for _ in range(nodes - 1):
    cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
import ray
from reftok_deploy.cli.tokenize import main
try:
    main(sys.argv[2:] + ["--address", cluster.address, "--workers", str(nodes)], standalone_mode=False)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def model_only_fps(videos: list[str], deployment: Deployment, size: int) -> tuple[float, float]:
    """Frames per second of the model alone on the GOPs of ``videos`` (decoded first), one process:
    (encoder only, as reftok-tokenize runs it; encoder + decoder, reftok-bench's model-only row)."""
    block_frames = deployment.config().block_frames
    gops = [g for v in videos for g in plan_gops(read_video(v, size=size), block_frames)]
    with deployment.runner() as runner:
        codec = FrameCodec(runner)
        codec.encode(gops[0].reference, gops[0].padded(block_frames))  # warm-up
        encode = decode = 0.0
        for gop in gops:
            started = time.perf_counter()
            tokens = codec.encode(gop.reference, gop.padded(block_frames))
            encode += time.perf_counter() - started
            started = time.perf_counter()
            codec.decode(gop.reference, tokens)
            decode += time.perf_counter() - started
    references = sum(1 for i, g in enumerate(gops) if i == 0 or g.reference is not gops[i - 1].reference)
    frames = sum(len(g.block) for g in gops) + references
    return frames / encode, frames / (encode + decode)


def tokenize_fps(args: list[str], cluster_nodes: int | None = None) -> dict:
    """reftok-tokenize's --json summary for ``args`` (in a fresh process; on a local Cluster if asked)."""
    code = RUN_ON_CLUSTER if cluster_nodes else "from reftok_deploy.cli.tokenize import main; main()"
    argv = [sys.executable, "-c", code] + ([str(cluster_nodes)] if cluster_nodes else []) + args + ["--json"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode not in (0, 3):
        raise SystemExit(f"reftok-tokenize failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout[done.stdout.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--export", default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="threads of each tokenize worker")
    parser.add_argument("--repeat", type=int, default=5,
                        help="list each clip this many times (as separate clips), so start-up is a small share")
    parser.add_argument("--no-cluster", action="store_true", help="skip the one- and two-node cluster rows")
    options = parser.parse_args()

    cores = usable_cores()
    deployment = Deployment(options.checkpoint, options.export, options.backend, threads=options.threads)
    deployment.with_shipped_checkpoint().choose_backend((options.size, options.size))
    if deployment.why is not None:
        print(f"backend: {deployment.backend} ({deployment.why})")
    backend, export, checkpoint = deployment.backend, deployment.export, deployment.checkpoint
    deployment.threads = cores  # the model alone runs on every core
    alone, alone_with_decoder = model_only_fps(options.videos, deployment, options.size)
    with tempfile.TemporaryDirectory(prefix="reftok-bench-") as tmp:
        listing = Path(tmp) / "clips.csv"
        atomic_write_bytes(listing, ("path,clip_id\n" + "".join(f"{Path(v).resolve()},{Path(v).stem}-{i}\n"
                                                                for i in range(options.repeat)
                                                                for v in options.videos)).encode())
        report(options, backend, export, checkpoint, (alone, alone_with_decoder), cores, listing, tmp)


def report(options, backend: str, export, checkpoint: str, model: tuple[float, float], cores: int, listing: Path,
           tmp: str) -> None:
    common = [str(listing), "--checkpoint", checkpoint, "--backend", backend, "--size", str(options.size),
              "--threads", str(options.threads)] + (["--export", str(export.path)] if export else [])
    local = tokenize_fps(common + ["-o", f"{tmp}/local"])
    nodes = {} if options.no_cluster else {n: tokenize_fps(common + ["-o", f"{tmp}/nodes{n}"], n) for n in (1, 2)}
    print(f"{cpu_name()}, {cores} cores; {backend}; {options.size}x{options.size}; clips: "
          + ", ".join(Path(v).name for v in options.videos) + f", each {options.repeat} times")
    alone, with_decoder = model
    print(f"(a) model alone, one process on {cores} threads: encoder only (what reftok-tokenize runs) {alone:.1f} "
          f"frames/s; encoder + decoder (reftok-bench's model-only row) {with_decoder:.1f} frames/s")
    print(f"(b) reftok-tokenize on local Ray ({local.get('frames')} frames, {len(local['nodes'])} node, "
          f"{local['worker_pids']} workers x {options.threads} thread(s)): {local['frames_per_second']:.1f} frames/s "
          f"after {local['ray_start_seconds']:.1f} s of Ray start-up ({local['seconds']:.1f} s in all)")
    print(f"pipeline efficiency (b)/(a), against the encoder alone: {local['frames_per_second'] / alone:.2f} "
          f"(against the encoder + decoder row: {local['frames_per_second'] / with_decoder:.2f})")
    for n, summary in nodes.items():
        print(f"(c) local cluster of {n} node(s), 1 CPU each, {n} worker(s): {summary['frames_per_second']:.1f} frames/s "
              f"({len(summary['nodes'])} node(s) did work)")


if __name__ == "__main__":
    main()
