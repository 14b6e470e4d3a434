"""reftok-tokenize on a real Ray: a corpus into Parquet shards, every clip decoding like reftok-run's .rtok,
a killed driver or worker losing nothing, and a two-node local cluster (Ray's own ``Cluster``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("ray.data", reason="reftok-tokenize needs ray[data]: pip install 'reftok-deploy[ray]'")
pq = pytest.importorskip("pyarrow.parquet")

from reftok_deploy.cli.decode import main as decode_main  # noqa: E402
from reftok_deploy.cli.run import main as run_main  # noqa: E402
from reftok_deploy.dataset.corpus import expand_inputs  # noqa: E402
from reftok_deploy.base.errors import ReftokError  # noqa: E402
from tests.conftest import moving_still, one_error_line, write_video  # noqa: E402

TOKENIZE = [sys.executable, "-c", "from reftok_deploy.cli.tokenize import main; main()"]
STILLS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three clips (one in a sub-folder) and a corrupt file; a larger set of six for the kill tests."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "more").mkdir()
    clips = [write_video(root / "a.avi", moving_still("astronaut", 27, 64, seed=1)),
             write_video(root / "b.avi", moving_still("chelsea", 20, 64, seed=2)),
             write_video(root / "more" / "c.avi", moving_still("coffee", 31, 64, seed=3))]
    corrupt = root / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16)
    big = root / "big"
    big.mkdir()
    for i, name in enumerate(STILLS):
        write_video(big / f"{name}.avi", moving_still(name, 90, 96, seed=10 + i))
    return {"root": root, "clips": clips, "corrupt": corrupt, "big": big}


def tokenize(args: list, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(TOKENIZE + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def rows(out: Path) -> list[dict]:
    """Every row of a dataset, read with pyarrow alone, in (clip, GOP) order."""
    import pyarrow.dataset as ds

    table = ds.dataset(out / "shards", format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda r: (r["clip_id"], r["gop_index"]))


def test_inputs_are_files_folders_globs_and_manifests(corpus, tmp_path):
    import pyarrow as pa

    a, b, c = corpus["clips"]
    (tmp_path / "list.txt").write_text(f"# clips\n{a}\nmore/c.avi\n")
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "c.avi").write_bytes(c.read_bytes())
    pq.write_table(pa.table({"path": [str(a), str(b)], "clip_id": ["first", "second"]}), tmp_path / "m.parquet")
    (tmp_path / "m.csv").write_text(f"path\n{b}\n")
    by_folder = expand_inputs([str(corpus["root"])])
    assert sorted(Path(c.source).name for c in by_folder) == \
        sorted(["a.avi", "b.avi", "broken.mp4", "c.avi"] + [f"{n}.avi" for n in STILLS])
    assert len({c.clip_id for c in by_folder}) == len(by_folder)
    assert [c.source for c in expand_inputs([f"file://{a}", str(corpus['root'] / '*.avi')])] == [str(a), str(b)]
    assert [(c.clip_id, c.source) for c in expand_inputs([str(tmp_path / "m.parquet")])] == \
        [("first", str(a)), ("second", str(b))]
    assert [c.source for c in expand_inputs([str(tmp_path / "list.txt")])] == [str(a), str(tmp_path / "more" / "c.avi")]
    assert [c.source for c in expand_inputs([str(tmp_path / "m.csv"), str(b)])] == [str(b)]  # the same file once
    (tmp_path / "bad.csv").write_text("file\nx.mp4\n")
    for bad, fragment in [([str(tmp_path / "none")], "not found"), ([str(tmp_path / "bad.csv")], "no 'path' column"),
                          ([str(tmp_path / "*.mkv")], "no file matches")]:
        with pytest.raises(ReftokError, match=fragment):
            expand_inputs(bad)


def test_a_corpus_becomes_shards_and_every_clip_decodes_like_reftok_run(corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "ds"
    a, b, c = corpus["clips"]
    args = [a, b, corpus["root"] / "more", corpus["corrupt"], "-o", out, "--checkpoint", tiny_checkpoint,
            "--backend", "torch", "--workers", "2", "--rows-per-shard", "2", "--json"]
    done = tokenize(args)
    assert done.returncode == 3, done.stderr  # one clip failed: documented exit 3
    report = json.loads(done.stdout)
    assert (report["clips"], report["failed"], report["skipped"]) == (3, 1, 0), report
    assert "broken.mp4" in next(iter(report["failed_clips"].values()))
    manifest = json.loads((out / "manifest.json").read_text())
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["source"] for e in errors] == [str(corpus["corrupt"])] and errors[0]["reason"]
    table = rows(out)
    assert len(table) == report["gops"] == sum(e["gops"] for e in manifest["clips"].values()) >= 10
    assert max(len(pq.read_table(p)) for p in (out / "shards").iterdir()) == 2  # --rows-per-shard
    assert all(len(r["tokens"]) == 2 * 8 * 8 for r in table) and all(r["new_reference"] for r in table)
    for clip_id, entry in manifest["clips"].items():
        if entry["status"] != "done":
            continue
        rtok = tmp_path / f"{clip_id}.rtok"
        result = CliRunner().invoke(run_main, ["--video", entry["source"], "--checkpoint", str(tiny_checkpoint),
                                               "--backend", "torch", "--tokens", str(rtok)])
        assert result.exit_code == 0, result.stderr
        from reftok_deploy.base.tokenstream import Block, read_stream

        assert sum(isinstance(r, Block) for r in read_stream(rtok)[1]) == entry["gops"]
        decoded = [CliRunner().invoke(decode_main, argv + ["--checkpoint", str(tiny_checkpoint), "--backend", "torch",
                                                           "--json"])
                   for argv in ([str(rtok)], [str(out), "--clip", clip_id])]
        assert [d.exit_code for d in decoded] == [0, 0], [d.stderr for d in decoded]
        digests = [json.loads(d.stdout)["reconstruction_sha256"] for d in decoded]
        assert digests[0] == digests[1], clip_id
    again = tokenize(args)  # the same command again: every finished clip skipped, the rows unchanged
    assert again.returncode == 3 and json.loads(again.stdout)["skipped"] == 3, again.stderr
    assert rows(out) == table


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def ray_workers() -> list[int]:
    """PIDs of this machine's reftok-tokenize actor processes."""
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [int(line.split()[0]) for line in listing if "RayClipTokenizer" in line and "ps -eo" not in line]


@pytest.mark.slow  # end-to-end tier (.ci/run's second step): three Ray jobs, about 80 s on 2 cores
def test_a_killed_driver_or_worker_loses_nothing(corpus, tiny_checkpoint, tmp_path):
    common = ["--checkpoint", tiny_checkpoint, "--backend", "torch", "--workers", "2", "--rows-per-shard", "3"]
    whole = tokenize([corpus["big"], "-o", tmp_path / "whole", *common])
    assert whole.returncode == 0, whole.stderr
    expected = rows(tmp_path / "whole")

    # the driver SIGKILLed once the first clip is done, then the same command again
    out = tmp_path / "killed"
    driver = subprocess.Popen(TOKENIZE + [str(a) for a in [corpus["big"], "-o", out, *common]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert wait_for(lambda: any((out / "done").glob("*.json")), 120)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (out / "manifest.json").exists()  # it really stopped part way
    assert wait_for(lambda: not ray_workers(), 60), "the killed job's workers lived on"
    rerun = tokenize([corpus["big"], "-o", out, *common, "--json"])
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert 1 <= summary["skipped"] < len(STILLS) and summary["clips"] == len(STILLS)
    assert rows(out) == expected

    # a worker process SIGKILLed while it tokenizes: Ray restarts it and retries its clip
    out = tmp_path / "worker"
    driver = subprocess.Popen(TOKENIZE + [str(a) for a in [corpus["big"], "-o", out, *common, "--json"]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(ray_workers()) == 2 and any((out / "done").glob("*.json")), 120)
    alive = ray_workers()
    os.kill(alive[0], signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["clips"] == len(STILLS) and summary["failed"] == 0, summary
    assert not os.path.exists(f"/proc/{alive[0]}")  # the worker really died, and no clip was lost with it
    assert rows(out) == expected


TWO_NODES = """
import json, sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
from reftok_deploy.cli.tokenize import main
import ray
try:
    main(sys.argv[1:] + ["--address", cluster.address], standalone_mode=False)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow  # end-to-end tier: a Ray cluster of two nodes
def test_a_two_node_cluster_shares_the_clips(corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "ds"
    done = subprocess.run([sys.executable, "-c", TWO_NODES, str(corpus["big"]), "-o", str(out), "--checkpoint",
                           str(tiny_checkpoint), "--backend", "torch", "--workers", "2", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["clips"] == len(STILLS) and len(summary["nodes"]) == 2, summary


@pytest.mark.parametrize("case", ["missing", "empty", "unwritable", "address", "manifest", "same-as-input",
                                  "refine-onnx"])
def test_bad_input_is_one_line_and_leaves_nothing(corpus, tiny_checkpoint, tmp_path, case):
    from reftok_deploy.cli.tokenize import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("file\nx.mp4\n")
    inputs, out, fragment = {
        "missing": ([tmp_path / "none"], tmp_path / "out", "input not found"),
        "empty": ([tmp_path / "empty"], tmp_path / "out", "no video found"),
        "unwritable": (corpus["clips"][:1], "/proc/reftok-nope/out", "not writable"),
        "address": (corpus["clips"][:1], tmp_path / "out", "nothing answers there"),
        "manifest": ([tmp_path / "bad.csv"], tmp_path / "out", "no 'path' column"),
        "same-as-input": (corpus["clips"][:1], corpus["clips"][0], "is a file"),
        "refine-onnx": (corpus["clips"][:1], tmp_path / "out", "use --backend torch"),
    }[case]
    extra = {"address": ["--address", "127.0.0.1:9"],
             "refine-onnx": ["--backend", "onnxruntime", "--refine-steps", "3"]}.get(case, [])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, [str(i) for i in inputs] + ["-o", str(out), "--checkpoint", str(tiny_checkpoint),
                                                                  "--backend", "torch", *extra])
    one_error_line(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow  # end-to-end tier: a Ray job stopped with Ctrl-C, then resumed
def test_ctrl_c_keeps_the_finished_clips_and_the_same_command_resumes(corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "ds"
    args = [str(a) for a in [corpus["big"], "-o", out, "--checkpoint", tiny_checkpoint, "--backend", "torch",
                             "--workers", "2"]]
    driver = subprocess.Popen(TOKENIZE + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert wait_for(lambda: any((out / "done").glob("*.json")), 120)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130 and stderr.strip().splitlines()[-1] == "interrupted", stderr[-2000:]
    kept = {p.stem for p in (out / "done").glob("*.json")}
    assert kept and not (out / "manifest.json").exists()  # the new folder and its finished clips are kept
    assert wait_for(lambda: not ray_workers(), 60)
    rerun = tokenize(args + ["--json"])
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["skipped"] >= len(kept) and json.loads(rerun.stdout)["clips"] == len(STILLS)


def test_refine_steps_store_tokens_that_decode_closer_to_the_clip(corpus, tiny_checkpoint, tmp_path):
    """In one worker (no Ray): the rows of --refine-steps 10 decode each GOP no worse than the encoder's own, and
    better somewhere; a rerun with other steps is a dataset of other settings."""
    import numpy as np

    from reftok_deploy.base.video import iter_video
    from reftok_deploy.dataset.clip_tokenizer import ClipTokenizer, TokenizeSettings
    from reftok_deploy.dataset.corpus import Clip

    source = str(corpus["clips"][0])
    frames = list(iter_video(source))
    errors = {}
    for steps in (0, 10):
        settings = TokenizeSettings(out=str(tmp_path / f"ds{steps}"), checkpoint=str(tiny_checkpoint),
                                    export_folder=None, backend="torch", device="cpu", threads=1, size=None,
                                    refresh_blocks=1, cut_threshold=None, rows_per_shard=256,
                                    max_pixels=10**6, block_frames=8, refine_steps=steps)
        worker = ClipTokenizer(settings)
        assert worker.tokenize(Clip("a", source))["status"] == "done"
        errors[steps] = []
        for row in rows(tmp_path / f"ds{steps}"):
            reference = frames[row["reference_frame"]]  # stored losslessly as the row's PNG
            tokens = np.asarray(row["tokens"], np.int32).reshape(row["token_groups"], row["token_height"],
                                                                 row["token_width"])
            block = worker.codec.decode(reference, tokens)[:row["frames"]]
            truth = np.stack(frames[row["first_frame"]:row["first_frame"] + row["frames"]])
            errors[steps].append(float(((block.astype(float) - truth) ** 2).mean()))
        fingerprint = settings.fingerprint()
    assert len(errors[0]) == len(errors[10]) >= 2
    assert all(r <= e * 1.02 + 0.5 for r, e in zip(errors[10], errors[0])), errors
    assert sum(errors[10]) < 0.98 * sum(errors[0]), errors
    assert fingerprint["refine_steps"] == 10


def test_refining_backend_is_torch_by_any_spelling_and_nothing_else():
    from reftok_deploy.runtimes.factory import refining_backend

    assert [refining_backend(spec) for spec in ("auto", "torch", "torch:fp32", "pytorch")] == ["torch"] * 4
    with pytest.raises(ReftokError, match="use --backend torch"):
        refining_backend("openvino:bf16")
