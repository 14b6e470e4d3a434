"""reftok-serve's engine: the Serve application (gateway, encoder, decoder) built, started and stopped.

The encoder and the decoder are separate deployments so they scale apart (a site that only
tokenizes runs no decoder work); each replica holds one runner. The gateway takes no CPU of its own
in Ray's accounting (it parses and forwards), the replicas as many as their threads.
"""

from __future__ import annotations

import math
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.service_api import API_VERSION, ServiceLimits
from reftok_deploy.base.video import DEFAULT_MAX_PIXELS
from reftok_deploy.base.spec import SPATIAL_FACTOR
from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.serve.replicas import RunnerSettings

APP_NAME = "reftok"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Scaling:
    """Replicas of one deployment: a fixed count, or autoscaling bounds (``min_replicas < max_replicas``)."""

    min_replicas: int = 1
    max_replicas: int = 1
    cpus: float = 1.0  # Ray's CPU share of each replica
    gpus: float = 0.0  # fractional GPUs per replica (0 on CPU)

    def options(self) -> dict[str, Any]:
        actor = {"num_cpus": self.cpus, **({"num_gpus": self.gpus} if self.gpus else {})}
        if self.min_replicas == self.max_replicas:
            return {"num_replicas": self.min_replicas, "ray_actor_options": actor}
        return {"autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                       "target_ongoing_requests": 2},
                "ray_actor_options": actor}


@dataclass(frozen=True)
class ServiceSettings:
    runner: RunnerSettings
    encoder: Scaling
    decoder: Scaling
    limits: ServiceLimits
    model: dict[str, Any]  # what GET /v1/model answers
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None


def service_settings(deployment: Deployment, encoder: Scaling, decoder: Scaling, max_pixels: int = DEFAULT_MAX_PIXELS,
                     **options: Any) -> ServiceSettings:
    """Resolve what every replica will run (the checkpoint, the export, ``--backend auto`` measured once
    here at 256x256) -> the service's settings; ``options``: the other :class:`ServiceSettings` fields."""
    deployment.with_shipped_checkpoint()
    deployment.choose_backend(size=(256, 256))
    config = deployment.config()
    limits = ServiceLimits(config.block_frames, config.block_frames // config.temporal_factor, SPATIAL_FACTOR,
                           int(math.prod(config.fsq_levels)), max_pixels)
    export = deployment.export
    runner = RunnerSettings(deployment.backend, None if export is None else str(export.path),
                            str(deployment.checkpoint), deployment.device, deployment.threads)
    model = model_document(config, deployment.weights_sha256(), deployment.backend, deployment.label, limits)
    return ServiceSettings(runner, encoder, decoder, limits, model, **options)


def model_document(config: Any, checkpoint_sha256: str, backend_spec: str, backend_label: str,
                   limits: ServiceLimits) -> dict[str, Any]:
    """GET /v1/model's answer from a RefTokConfig: ``backend`` is the label .rtok headers record,
    ``backend_spec`` the --backend spec that runs the same way elsewhere."""
    return {"api": API_VERSION, "model_version": int(config.model_version),
            "block_frames": config.block_frames, "temporal_factor": config.temporal_factor,
            "groups": config.block_frames // config.temporal_factor, "spatial_factor": limits.spatial_factor,
            "fsq_levels": list(config.fsq_levels), "codebook_size": int(math.prod(config.fsq_levels)),
            "checkpoint_sha256": checkpoint_sha256, "backend": backend_label, "backend_spec": backend_spec, "limits": limits.as_dict()}


def check_port_free(host: str, port: int) -> None:
    """One line now, rather than a proxy that fails to bind somewhere in Ray's logs."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ReftokError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def build_application(settings: ServiceSettings):
    """The Serve application: gateway -> encoder, decoder."""
    from ray import serve

    from reftok_deploy.serve.gateway import Gateway
    from reftok_deploy.serve.replicas import DecoderReplica, EncoderReplica

    wait_s = settings.batch_wait_ms / 1000.0
    encoder = serve.deployment(EncoderReplica, name="Encoder", **settings.encoder.options())
    decoder = serve.deployment(DecoderReplica, name="Decoder", **settings.decoder.options())
    gateway = serve.deployment(Gateway, name="Gateway", ray_actor_options={"num_cpus": 0})
    return gateway.bind(encoder.bind(settings.runner, settings.max_batch, wait_s),
                        decoder.bind(settings.runner, settings.max_batch, wait_s),
                        settings.model, settings.limits, settings.token)


def start_service(settings: ServiceSettings, address: str | None = None, say: Callable[[str], None] = print) -> str:
    """Start Ray (embedded, or join ``address``), Serve's HTTP proxy on host:port, and the application;
    -> the URL, once every replica is up."""
    import logging

    from ray import serve

    from reftok_deploy.deploy.ray_cluster import start_ray

    if address is None:
        check_port_free(settings.host, settings.port)
    start_ray(address, None)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines are Ray's progress, not ours
    serve.start(http_options={"host": settings.host, "port": settings.port}, proxy_location="HeadOnly",
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    started = time.monotonic()
    serve.run(build_application(settings), name=APP_NAME, route_prefix="/", blocking=False)
    say(f"replicas up in {time.monotonic() - started:.1f} s")
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def stop_service(keep_cluster: bool = False) -> None:
    """Remove the application (and, on an embedded Ray, Serve itself); leave Ray. Harmless if never started."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if keep_cluster:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
    finally:
        ray.shutdown()


