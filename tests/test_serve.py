"""reftok-serve for real (end-to-end tier): a local Ray Serve on the CPU, clients over HTTP, a replica killed.

The server is the console script in its own process; clients are :class:`ServerClient` threads and
reftok-run --server. Every token that comes back is compared with the same backend run in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")

from reftok_deploy.base.service_api import ENCODE_PATH  # noqa: E402
from reftok_deploy.base.wire import MEDIA_TYPE, encode_arrays  # noqa: E402
from reftok_deploy.runtimes.remote import ServerClient  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end tier: a Ray cluster and Serve start in about 20-40 s on 2 cores
SERVE = [sys.executable, "-c", "from reftok_deploy.cli.serve import main; main()"]
TOKEN = "test-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def replica_pids(deployment: str, server: subprocess.Popen) -> set[int]:
    """PIDs of the server's Serve replica processes of ``deployment`` (Ray names them in the process title; the
    embedded Ray's raylet, their parent, is the server's child)."""
    listing = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    parent = {int(line.split()[0]): int(line.split()[1]) for line in listing}

    def under_server(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 1)
            if pid == server.pid:
                return True
        return False

    return {int(line.split()[0]) for line in listing
            if f"ServeReplica:reftok:{deployment}" in line and under_server(int(line.split()[0]))}


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tiny_export, tmp_path_factory):
    """A reftok-serve process with two encoder replicas and one decoder, onnxruntime FP32, a bearer token."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(SERVE + ["--checkpoint", str(tiny_checkpoint), "--export", str(tiny_export),
                                            "--backend", "onnxruntime:fp32", "--threads", "1", "--replica-cpus", "0.5",
                                            "--encoder-replicas", "2", "--port", str(port), "--max-pixels", "16384",
                                            "--token", TOKEN], stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + 240
    while "Ctrl-C stops" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    yield {"url": f"http://127.0.0.1:{port}", "process": process, "log": log}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def gops(real_clip):
    """(reference, block) pairs of a real clip, 64x64."""
    frames = real_clip[:, :64, :64]
    return [(frames[i], frames[i + 1: i + 9]) for i in range(0, len(frames) - 9, 9)]


def local_tokens(tiny_checkpoint, tiny_export, pairs):
    from reftok_deploy.deploy.deployment import Deployment
    from reftok_deploy.runtimes.codec import FrameCodec

    deployment = Deployment(str(tiny_checkpoint), str(tiny_export), "onnxruntime:fp32", threads=1)
    deployment.choose_backend()
    with deployment.runner() as runner:
        codec = FrameCodec(runner)
        return [codec.encode(reference, block) for reference, block in pairs]


def test_concurrent_clients_get_local_tokens_while_a_replica_is_killed(server, gops, tiny_checkpoint, tiny_export):
    expected = local_tokens(tiny_checkpoint, tiny_export, gops)
    rounds, clients = 6, 4
    done = [0] * clients
    results: list[list[np.ndarray] | BaseException] = [[] for _ in range(clients)]
    retries = [0] * clients

    def stream(index: int) -> None:
        client = ServerClient(server["url"], token=TOKEN, retry_seconds=180)
        try:
            for _ in range(rounds):
                for reference, block in gops:
                    results[index].append(client.encode(reference, block))
                    done[index] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[index] = exc
        retries[index] = client.retries
        client.close()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    while sum(done) < clients * 2:
        time.sleep(0.05)
    before = replica_pids("Encoder", server["process"])
    assert len(before) == 2, before
    victim = min(before)
    os.kill(victim, signal.SIGKILL)  # mid-run: the other clients' GOPs are in flight on both replicas
    for thread in threads:
        thread.join(timeout=600)
    for index, got in enumerate(results):
        assert not isinstance(got, BaseException), f"client {index}: {got!r}\n{server['log'].read_text()[-2000:]}"
        assert len(got) == rounds * len(gops)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected * rounds)), f"client {index}: other tokens"
    deadline = time.monotonic() + 120
    while not ((now := replica_pids("Encoder", server["process"])) and len(now) == 2 and victim not in now):
        assert time.monotonic() < deadline, "Serve did not replace the killed replica"
        time.sleep(1)
    print(f"clients retried {sum(retries)} request(s) after the kill")


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_bad_requests_are_refused_and_the_server_keeps_serving(server, gops):
    reference, block = gops[0]
    good = encode_arrays([reference, block])
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MEDIA_TYPE}
    url = server["url"] + ENCODE_PATH
    cases = [
        (good, {"Content-Type": MEDIA_TYPE}, 401, "bearer token is required"),
        (good[:-3], auth, 400, "header promises"),
        (b"garbage", auth, 400, "not a .npy array"),
        (encode_arrays([np.zeros((200, 200, 3), np.uint8), np.zeros((8, 200, 200, 3), np.uint8)]), auth, 413, "at most"),
        (encode_arrays([np.zeros((129, 128, 3), np.uint8), np.zeros((8, 129, 128, 3), np.uint8)]), auth, 400,
         "over this server's limit of 16384 pixels"),
        (encode_arrays([reference, block[:, :32]]), auth, 400, "frames are"),
    ]
    for body, headers, status, reason in cases:
        got, text = post(url, body, headers)
        assert (got, text.count("\n")) == (status, 1) and reason in text, (reason, got, text)
    client = ServerClient(server["url"], token=TOKEN)
    assert client.encode(reference, block).shape == (2, 8, 8)
    assert client.decode(reference, client.encode(reference, block)).shape == (8, 64, 64, 3)
    assert server["process"].poll() is None


def test_the_client_says_what_the_server_refused(server, gops):
    from reftok_deploy.base.errors import ReftokError

    reference, block = gops[0]
    with pytest.raises(ReftokError, match=r"refused /v1/encode \(401\): wrong bearer token"):
        ServerClient(server["url"], token="nope").encode(reference, block)
    with pytest.raises(ReftokError, match=r"\(409\): this server runs checkpoint"):
        ServerClient(server["url"], token=TOKEN, checkpoint_sha256="0" * 64).encode(reference, block)


def test_reftok_run_with_the_model_on_the_server_writes_the_local_runs_tokens(server, video_file, tiny_checkpoint,
                                                                             tiny_export, tmp_path):
    from tests.conftest import invoke

    from reftok_deploy.cli.run import main as run_main

    common = ["--video", video_file, "--no-display", "--json"]
    local = invoke(run_main, [*common, "--checkpoint", tiny_checkpoint, "--export", tiny_export, "--backend",
                              "onnxruntime:fp32", "--threads", "1", "--tokens", tmp_path / "local.rtok"])
    remote = invoke(run_main, [*common, "--server", server["url"], "--token", TOKEN, "--streams", "2",
                               "--checkpoint", tiny_checkpoint, "--tokens", tmp_path / "remote.rtok"])
    assert local.exit_code == 0 and remote.exit_code == 0, (local.output, remote.output)
    assert (tmp_path / "local.rtok").read_bytes() == (tmp_path / "remote.rtok").read_bytes()
    assert json.loads(remote.stdout)["reconstruction_sha256"] == json.loads(local.stdout)["reconstruction_sha256"]
    wrong = invoke(run_main, [*common, "--server", server["url"], "--token", "nope"])
    assert wrong.exit_code == 2 and "wrong bearer token" in wrong.stderr


def test_sigterm_stops_the_server_with_exit_0(server):
    """SIGTERM (systemd, docker stop; Ctrl-C's SIGINT takes the same path, but a job started in the background of
    a non-interactive shell, as CI may start pytest, inherits SIGINT ignored)."""
    process = server["process"]
    replicas = replica_pids("Encoder", process) | replica_pids("Decoder", process)
    assert len(replicas) == 3
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, server["log"].read_text()[-2000:]
    time.sleep(2)
    assert not [pid for pid in replicas if Path(f"/proc/{pid}").exists()], "replicas outlived the server"
    assert "Traceback" not in Path(server["log"]).read_text()
