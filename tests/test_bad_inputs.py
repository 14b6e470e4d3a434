"""Every bad input, every command: one stderr line starting with ``error:``, exit 2, no traceback,
no partial output file. The memory-hungry ones also run under an address-space limit."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reftok_deploy.cli.bench import main as bench_main
from reftok_deploy.cli.decode import main as decode_main
from reftok_deploy.cli.eval import main as eval_main
from reftok_deploy.cli.export import main as export_main
from reftok_deploy.cli.parity import main as parity_main
from reftok_deploy.cli.run import main as run_main
from reftok_deploy.cli.train import main as train_main
from tests.conftest import moving_still, write_video

COMMANDS = {"train": train_main, "eval": eval_main, "export": export_main, "parity": parity_main,
            "bench": bench_main, "run": run_main, "decode": decode_main}
FAST_TRAIN = ["--steps", "1", "--batch", "1", "--crop", "32", "--no-builtin-stills"]


def record(kind: int, payload: bytes) -> bytes:
    return struct.pack("<BI", kind, len(payload)) + payload + struct.pack("<I", zlib.crc32(payload))


def rewrite_stream(data: bytes, header_edit: dict | None = None, records: list | None = None) -> bytes:
    """A version-2 .rtok like ``data`` (version 2) with an edited header and/or other ``records`` (encoded,
    without the end record), its header CRC and end record (count, file CRC) made to match: only the edit differs."""
    hlen = struct.unpack("<I", data[6:10])[0]
    assert struct.unpack("<H", data[4:6])[0] == 2
    header = json.loads(data[10:10 + hlen])
    header.update(header_edit or {})
    blob = json.dumps(header).encode()
    head = b"RTOK" + struct.pack("<HI", 2, len(blob)) + blob
    if records is None:
        records, pos, body = [], 0, data[10 + hlen + 4:-17]  # between the header CRC and the end record
        while pos < len(body):
            size = 9 + struct.unpack("<I", body[pos + 1:pos + 5])[0]
            records.append(body[pos:pos + size])
            pos += size
    crc = zlib.crc32(head)  # the file CRC leaves out the CRC fields (each one's last 4 bytes)
    for item in records:
        crc = zlib.crc32(item[:-4], crc)
    end = record(3, struct.pack("<II", len(records), crc))
    return head + struct.pack("<I", zlib.crc32(head)) + b"".join(records) + end


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint, tiny_export):
    """Every hostile or broken input the cases below use, made once."""
    root = tmp_path_factory.mktemp("bad")
    f = {"root": root, "ck": tiny_checkpoint}
    f["video"] = write_video(root / "clip.avi", moving_still("chelsea", 18, 64, seed=3))
    f["short"] = write_video(root / "short.avi", moving_still("chelsea", 4, 64))
    f["corrupt"] = root / "corrupt.mp4"
    f["corrupt"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    f["text"] = root / "notes.txt"
    f["text"].write_text("not a video")
    f["empty_dir"] = root / "empty"
    f["empty_dir"].mkdir()
    f["data"] = root / "data"
    f["data"].mkdir()
    shutil.copy(f["video"], f["data"] / "clip.avi")
    f["unwritable"] = Path("/proc/reftok-cannot-write")
    for name, edit in {"ck_huge": {"channels": [4000, 4000, 4000]}, "ck_deep": {"res_blocks": 1000000},
                       "ck_float": {"channels": [32.7, 64, 96]}, "ck_nolevels": None}.items():
        folder = f[name] = root / name
        shutil.copytree(tiny_checkpoint, folder)
        config = json.loads((folder / "config.json").read_text())
        if edit is None:
            del config["model"]["fsq_levels"]
        else:
            config["model"].update(edit)
        (folder / "config.json").write_text(json.dumps(config))
    f["ck_badjson"] = root / "ck_badjson"
    shutil.copytree(tiny_checkpoint, f["ck_badjson"])
    (f["ck_badjson"] / "config.json").write_text("{not json")
    f["ck_badweights"] = root / "ck_badweights"
    shutil.copytree(tiny_checkpoint, f["ck_badweights"])
    (f["ck_badweights"] / "model.safetensors").write_bytes(b"garbage" * 100)
    f["export"] = root / "export"
    shutil.copytree(tiny_export, f["export"])
    manifest = json.loads((f["export"] / "manifest.json").read_text())
    for name, change in {"ex_badjson": "json", "ex_version": "version", "ex_noartifacts": "artifacts",
                         "ex_tampered": "tamper", "ex_nomanifest": "nomanifest"}.items():
        folder = f[name] = root / name
        shutil.copytree(f["export"], folder)
        if change == "json":
            (folder / "manifest.json").write_text("{")
        elif change == "version":
            (folder / "manifest.json").write_text(json.dumps(dict(manifest, format_version=99)))
        elif change == "artifacts":
            (folder / "manifest.json").write_text(json.dumps(dict(manifest, artifacts=[1, 2])))
        elif change == "tamper":
            with open(folder / "decoder.fp32.onnx", "ab") as fh:
                fh.write(b"\0")
        else:
            (folder / "manifest.json").unlink()
    def relisted(name: str, edit) -> None:
        """A copy of the export whose files ``edit`` changes, with the manifest's hashes made to match."""
        import hashlib

        folder = f[name] = root / name
        shutil.copytree(f["export"], folder)
        listing = json.loads((folder / "manifest.json").read_text())
        edit(folder, listing)
        for entry in listing["artifacts"].values():
            entry["sha256"] = hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(listing))

    def swap(folder, listing):
        a, b = listing["artifacts"]["encoder.fp32"], listing["artifacts"]["decoder.fp32"]
        a["file"], b["file"] = b["file"], a["file"]

    def relabel(folder, listing):
        import onnx

        model = onnx.load(str(folder / "decoder.fp32.onnx"))
        for prop in model.metadata_props:
            if prop.key == "reftok.export":
                prop.value = json.dumps(dict(json.loads(prop.value), precision="fp16"))
        onnx.save(model, str(folder / "decoder.fp32.onnx"))

    def externalise(folder, listing):
        import onnx

        model = onnx.load(str(folder / "decoder.fp32.onnx"))
        onnx.save(model, str(folder / "decoder.fp32.onnx"), save_as_external_data=True, location="weights.bin",
                  size_threshold=0)

    relisted("ex_swapped", swap)
    relisted("ex_relabelled", relabel)
    relisted("ex_external", externalise)
    rtok = root / "good.rtok"
    result = CliRunner().invoke(run_main, ["--video", str(f["video"]), "--checkpoint", str(tiny_checkpoint),
                                           "--backend", "torch", "--tokens", str(rtok), "--size", "64"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = rtok.read_bytes()
    assert b'"fps": 10.0' in data  # one digit of it is flipped below
    f["rtok"] = rtok
    streams = {
        "rtok_truncated": data[:-40],
        "rtok_crc": data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:],
        "rtok_magic": b"NOPE" + data[4:],
        "rtok_random": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
        "rtok_block16": rewrite_stream(data, {"block_frames": 16}),
        "rtok_levels": rewrite_stream(data, {"fsq_levels": [8, 5, 5, 5, 2], "codebook_size": 2000}),
        "rtok_version": rewrite_stream(data, {"model_version": 1}),
        "rtok_huge": rewrite_stream(data, {"width": 16384, "height": 16384}),
        "rtok_emptyref": rewrite_stream(data, records=[record(1, b"")]),
        "rtok_nothing": data[:10 + struct.unpack("<I", data[6:10])[0] + 4 + 3],  # cut inside the first record
        "rtok_othersha": rewrite_stream(data, {"checkpoint_sha256": "ab" * 32}),
        "rtok_fps": rewrite_stream(data, {"fps": 5000.0}),
        "rtok_trailing": data + b"trailing bytes",
        "rtok_twice": data + data,
        "rtok_fpsdigit": data.replace(b'"fps": 10.0', b'"fps": 70.0'),  # header CRC left as it was
    }
    for name, blob in streams.items():
        f[name] = root / f"{name}.rtok"
        f[name].write_bytes(blob)
    (root / "train_resume").mkdir()
    return f


CASES = [
    # reftok-train
    ("train", ["{root}/none", "--out", "{out}/run", *FAST_TRAIN], "not found"),
    ("train", ["{empty_dir}", "--out", "{out}/run", *FAST_TRAIN], "no training data"),
    ("train", ["{short}", "--out", "{out}/run", *FAST_TRAIN], "shorter than one reference"),
    ("train", ["{data}", "--out", "{out}/run", "--crop", "36"], "multiple of 8"),
    ("train", ["{data}", "--out", "{out}/run", "--device", "bogus"], "use cpu, cuda or cuda:N"),
    ("train", ["{data}", "--out", "{out}/run", "--lr", "nan"], "Invalid value for '--lr'"),
    ("train", ["{data}", "--out", "{out}/run", "--lr", "-1"], "Invalid value for '--lr'"),
    ("train", ["{data}", "--out", "{out}/run", "--steps", "0"], "Invalid value for '--steps'"),
    ("train", ["{data}", "--out", "{out}/run", "--fsq-levels", "1,2"], "every level must be >= 2"),
    ("train", ["{data}", "--out", "{out}/run", "--fsq-levels", "a,b"], "comma-separated"),
    ("train", ["{data}", "--out", "{unwritable}/run", *FAST_TRAIN], "not writable"),
    ("train", ["{data}", "--out", "{out}/run", "--init-from", "{root}/none", *FAST_TRAIN], "checkpoint not found"),
    ("train", ["{data}", "--out", "{out}/run", "--preset", "huge"], "Invalid value for '--preset'"),
    ("train", ["{data}", "--out", "{out}/run", "--bogus"], "No such option"),
    ("train", ["{data}"], "Missing option '-o' / '--output'."),
    # reftok-eval
    ("eval", [], "--demo"),
    ("eval", ["{root}/none.mp4", "--checkpoint", "{ck}", "--no-twin"], "video not found"),
    ("eval", ["{corrupt}", "--checkpoint", "{ck}", "--no-twin"], "corrupt.mp4"),
    ("eval", ["{text}", "--checkpoint", "{ck}", "--no-twin"], "notes.txt"),
    ("eval", ["{video}", "--checkpoint", "{root}/none", "--no-twin"], "checkpoint not found"),
    ("eval", ["{video}", "--checkpoint", "{ck_huge}", "--no-twin"], "channels must be integers"),
    ("eval", ["{video}", "--checkpoint", "{ck_deep}", "--no-twin"], "res_blocks must be integers"),
    ("eval", ["{video}", "--checkpoint", "{ck_float}", "--no-twin"], "channels must be integers"),
    ("eval", ["{video}", "--checkpoint", "{ck_nolevels}", "--no-twin"], "missing config keys"),
    ("eval", ["{video}", "--checkpoint", "{ck_badjson}", "--no-twin"], "not valid JSON"),
    ("eval", ["{video}", "--checkpoint", "{ck_badweights}", "--no-twin"], "does not match the sha256"),
    ("eval", ["{video}", "--size", "12x"], "Invalid value for '--size'"),
    ("eval", ["{video}", "--size", "100000"], "Invalid value for '--size'"),
    ("run", ["--video", "{video}", "--size", "100000"], "Invalid value for '--size'"),
    # reftok-export
    ("export", ["--checkpoint", "{root}/none", "-o", "{out}/e"], "checkpoint not found"),
    ("export", ["--checkpoint", "{ck}", "-o", "{out}/e", "--int8"], "--int8 needs --calib-data"),
    ("export", ["--checkpoint", "{ck}", "-o", "{out}/e", "--profile", "1x2"], "bad profile"),
    ("export", ["--checkpoint", "{ck}", "-o", "{out}/e", "--validate-size", "100"], "multiple of 8"),
    ("export", ["--checkpoint", "{ck}", "-o", "{unwritable}/e", "--no-validate"], "not writable"),
    ("export", ["--checkpoint", "{ck_huge}", "-o", "{out}/e"], "channels must be integers"),
    ("export", ["--checkpoint", "{ck}", "-o", "{out}/e", "--bogus"], "No such option"),
    # reftok-parity
    ("parity", ["{root}/none"], "export folder not found"),
    ("parity", ["{ex_nomanifest}", "--checkpoint", "{ck}"], "no manifest.json"),
    ("parity", ["{ex_badjson}", "--checkpoint", "{ck}"], "not valid JSON"),
    ("parity", ["{ex_version}", "--checkpoint", "{ck}"], "manifest format"),
    ("parity", ["{ex_noartifacts}", "--checkpoint", "{ck}"], "lists no artifacts"),
    ("parity", ["{ex_tampered}", "--checkpoint", "{ck}"], "does not match its sha256"),
    ("parity", ["{ex_swapped}", "--checkpoint", "{ck}"], "records itself as decoder.fp32"),
    ("parity", ["{ex_relabelled}", "--checkpoint", "{ck}"], "records itself as decoder.fp16"),
    ("parity", ["{ex_external}", "--checkpoint", "{ck}"], "reads external data 'weights.bin'"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--export", "{ex_swapped}", "--backend", "onnxruntime"],
     "records itself as"),
    ("parity", ["{export}", "--checkpoint", "{ck}", "--b", "bogus"], "unknown backend"),
    ("parity", ["{export}", "--checkpoint", "{ck}", "--b", "onnxruntime:int8"], "has no int8"),
    ("parity", ["{export}", "--checkpoint", "{ck}", "--size", "100"], "multiple of 8"),
    ("parity", ["{export}", "--checkpoint", "{ck}", "--video", "{root}/none.mp4"], "video not found"),
    ("parity", ["{export}", "--checkpoint", "{ck_huge}"], "channels must be integers"),
    # reftok-bench
    ("bench", ["{root}/none"], "export folder not found"),
    ("bench", ["{export}", "--checkpoint", "{ck}", "--backends", "torch,bogus"], "unknown backend"),
    ("bench", ["{export}", "--checkpoint", "{ck}", "--size", "100"], "multiple of 8"),
    ("bench", ["{export}", "--checkpoint", "{ck}", "--repeats", "0"], "Invalid value for '--repeats'"),
    ("bench", ["{ex_tampered}", "--checkpoint", "{ck}"], "does not match its sha256"),
    # reftok-run
    ("run", ["--backend", "torch"], "give exactly one of"),
    ("run", ["--camera", "0", "--video", "{video}"], "give exactly one of"),
    ("run", ["--video", "{root}/none.mp4"], "video not found"),
    ("run", ["--camera", "7", "--backend", "torch"], "cannot open camera 7"),
    ("run", ["--video", "{corrupt}", "--backend", "torch"], "cannot open"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "bogus"], "unknown backend"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--device", "bogus"], "use cpu, cuda or cuda:N"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--output", "{out}/x.txt"], "must end in"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--output", "{video}/x.mp4"],
     "is a file, not a folder"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--tokens", "{unwritable}/t.rtok"],
     "not writable"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--max-pixels", "1000",
             "--output", "{out}/x.mp4"], "more than --max-pixels 1000"),
    ("run", ["--source", "csi://x"], "bad CSI source"),
    ("run", ["--source", "v4l2://foo"], "bad V4L2 source"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--export", "{root}/none"], "export folder not found"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck_huge}", "--backend", "torch"], "channels must be integers"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--display", "--output", "{out}/x.mp4"],
     "--display needs"),
    ("run", ["--video", "{video}", "--open-timeout", "0"], "Invalid value for '--open-timeout'"),
    # reftok-decode
    ("decode", ["{root}/none.rtok"], "not found"),
    ("decode", ["{rtok_magic}", "--checkpoint", "{ck}"], "bad magic"),
    ("decode", ["{rtok_random}", "--checkpoint", "{ck}"], "not a .rtok"),
    ("decode", ["{rtok_truncated}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.mp4"], "truncated"),
    ("decode", ["{rtok_crc}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.mp4"], "CRC"),
    ("decode", ["{rtok_othersha}", "--checkpoint", "{ck}", "--backend", "torch"], "another checkpoint"),
    ("decode", ["{rtok_fps}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.mp4"], "fps"),
    ("decode", ["{rtok_trailing}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.mp4"],
     "after the end record"),
    ("decode", ["{rtok_twice}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.mp4"],
     "after the end record"),
    ("decode", ["{rtok_fpsdigit}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.mp4"],
     "header is corrupt"),
    ("decode", ["{rtok_block16}", "--checkpoint", "{ck}", "--backend", "torch"], "header block_frames"),
    ("decode", ["{rtok_levels}", "--checkpoint", "{ck}", "--backend", "torch"], "header fsq_levels"),
    ("decode", ["{rtok_version}", "--checkpoint", "{ck}", "--backend", "torch"], "header model_version"),
    ("decode", ["{rtok_huge}", "--checkpoint", "{ck}"], "out of range"),
    ("decode", ["{rtok_emptyref}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.mp4"], "RGB PNG"),
    ("decode", ["{rtok_nothing}", "--checkpoint", "{ck}", "--backend", "torch", "--salvage", "-o", "{out}/d.mp4"],
     "nothing to salvage"),
    ("decode", ["{rtok}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.txt"], "must end in"),
    ("decode", ["{rtok}", "--checkpoint", "{ck}", "--backend", "bogus"], "unknown backend"),
]


@pytest.mark.parametrize("command,args,fragment", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, command, args, fragment):
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(out=out, **{k: v for k, v in files.items()}) for a in args]
    result = CliRunner().invoke(COMMANDS[command], argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is a failure of this test, shown whole
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert lines[-1] == errors[0] and not any("Traceback" in line for line in lines), result.stderr
    assert not [p for p in out.rglob("*") if p.is_file()], f"partial output left: {list(out.rglob('*'))}"


def test_the_matrix_covers_every_command_with_60_cases():
    assert len(CASES) >= 60 and {c for c, _, _ in CASES} == set(COMMANDS)


MEMORY_LIMIT = 3 << 30  # bytes of address space: the hostile inputs below asked for 5-23 GB before


@pytest.mark.parametrize("case", ["4000x3000 video", "30000x30000 reference", "4000-channel config"])
def test_hostile_inputs_stay_within_a_memory_limit(files, tmp_path, case):
    if case == "4000x3000 video":
        big = np.zeros((3, 3000, 4000, 3), np.uint8)
        big[:, ::7] = 200
        video = write_video(tmp_path / "big.avi", big)
        argv = ["reftok-run", "--video", str(video), "--checkpoint", str(files["ck"]), "--backend", "torch"]
    elif case == "30000x30000 reference":
        argv = ["reftok-decode", str(files["rtok_huge"]), "--checkpoint", str(files["ck"])]
    else:
        argv = ["reftok-eval", str(files["video"]), "--checkpoint", str(files["ck_huge"]), "--no-twin"]
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({0}, {0})); "
              "from reftok_deploy.cli.{1} import main; sys.argv = {2!r}; main()").format(
        MEMORY_LIMIT, argv[0].split("-")[1], argv)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
