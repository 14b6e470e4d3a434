"""reftok-serve: RefTok as an HTTP service on Ray Serve, batching the GOPs of many streams."""

from __future__ import annotations

import time

import click

from reftok_deploy.base.service_api import TOKEN_ENV
from reftok_deploy.base.video import DEFAULT_MAX_PIXELS
from reftok_deploy.cli import OneLineCommand, sigterm_as_interrupt, user_errors
from reftok_deploy.base.machine import usable_cores
from reftok_deploy.cli.options import (FiniteFloatRange, backend_option, checkpoint_option, device_option,
                                       export_option, threads_option, verbose_option)

REPLICAS = click.IntRange(1, 1024)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@checkpoint_option()
@export_option
@backend_option()
@device_option("cpu, cuda or cuda:N (torch / onnxruntime), in every replica.")
@threads_option
@click.option("--encoder-replicas", type=REPLICAS, default=1, show_default=True,
              help="Encoder replicas (each holds one copy of the model); with --max-replicas, the least.")
@click.option("--decoder-replicas", type=REPLICAS, default=1, show_default=True,
              help="Decoder replicas; with --max-replicas, the least.")
@click.option("--max-replicas", type=REPLICAS, default=None,
              help="Autoscale each deployment between its replicas and this many, on queued requests.")
@click.option("--replica-cpus", type=FiniteFloatRange(0, 1024), default=None,
              help="Ray's CPU share per replica [default: --threads (or 1); on a local Ray at most the cores shared "
                   "out among the replicas, so that every replica can start].")
@click.option("--replica-gpus", type=FiniteFloatRange(0, 64), default=0.0, show_default=True,
              help="GPUs per replica; fractions share one GPU (e.g. 0.25 puts four replicas on it).")
@click.option("--max-batch", type=click.IntRange(1, 256), default=8, show_default=True,
              help="GOPs of different clients a replica runs as one batch, at most.")
@click.option("--batch-wait-ms", type=FiniteFloatRange(0, 10_000), default=5.0, show_default=True,
              help="How long a replica waits for more GOPs to fill a batch.")
@click.option("--max-pixels", type=click.IntRange(64, 8192 * 8192), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest frame (H x W) a request may carry; larger ones get 400.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves other machines (pass --token then).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@click.option("--token", default=None, envvar=TOKEN_ENV, show_envvar=True,
              help="Bearer token every request but /v1/health must carry.")
@click.option("--address", default=None, help="Ray cluster to join (ray://... or HOST:PORT) [default: a local Ray].")
@verbose_option
@user_errors
def main(checkpoint, export_folder, backend, device, threads, encoder_replicas, decoder_replicas, max_replicas,
         replica_cpus, replica_gpus, max_batch, batch_wait_ms, max_pixels, host, port, token, address) -> None:
    """Serve RefTok's encoder and decoder over HTTP (API /v1: encode, decode, model, health).

    Clients: reftok-run --server URL, or reftok_deploy.runtimes.remote.ServerClient. Ctrl-C stops.
    """
    from reftok_deploy.deploy.deployment import Deployment
    from reftok_deploy.serve.app import LOOPBACK, Scaling, service_settings, start_service, stop_service

    say = (lambda msg: click.echo(msg, err=True))
    cpus = replica_cpus if replica_cpus is not None else default_replica_cpus(threads, address,
                                                                               encoder_replicas + decoder_replicas)
    scaling = [Scaling(n, max(n, max_replicas or n), cpus, replica_gpus) for n in (encoder_replicas, decoder_replicas)]
    deployment = Deployment(checkpoint, export_folder, backend, device, threads, say=say)
    settings = service_settings(deployment, *scaling, max_pixels=max_pixels, max_batch=max_batch,
                                batch_wait_ms=batch_wait_ms, host=host, port=port, token=token or None)
    if host not in LOOPBACK and not token:
        say(f"warning: serving on {host} without --token: anyone who reaches this port can use the model")
    try:
        url = start_service(settings, address, say)
        click.echo(f"serving {settings.model['backend']} (checkpoint {settings.model['checkpoint_sha256'][:16]}) "
                   f"on {url}/v1 with {encoder_replicas} encoder and {decoder_replicas} decoder replica(s)"
                   f"{f' (autoscaling to {max_replicas})' if max_replicas else ''}; Ctrl-C stops", err=True)
        with sigterm_as_interrupt():  # after Ray's start: its own handler would end the process on SIGTERM
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping")
    finally:
        stop_service(keep_cluster=address is not None)


def default_replica_cpus(threads: int | None, address: str | None, replicas: int) -> float:
    """--threads (or 1) CPUs per replica; on an embedded Ray, no more than its cores shared out among the replicas:
    Ray starts no replica it cannot give its CPUs, and Serve would wait for one forever."""
    wanted = float(threads or 1)
    return wanted if address is not None else min(wanted, usable_cores() / replicas)
