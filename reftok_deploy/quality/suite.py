"""The built-in evaluation suite: named cases like real sources, generated with no download.

Backgrounds and objects are scikit-image stills that training never sees (retina, Hubble deep
field, moon, grass, cell, logo); screen text is rendered from a fixed seed. Every case is
``[N,S,S,3]`` uint8 RGB, two GOPs long (1 reference + 8 frames, twice) at the default length.

| case | what it stands for |
|---|---|
| static | a fixed camera on a still scene, noiseless (copying the reference is exact) |
| static_noise | the same with sensor-like noise (sigma 3 levels, independent per frame) |
| local_motion | a fixed camera, objects moving over a still background (a desk, a street) |
| screen_text | a screen with characters being typed |
| pan | a camera pan (2.5 px/frame right, 1 down) |
| zoom | a slow zoom-in with a little rotation |
| fast_object | objects crossing a still background at ~10 px/frame |
| cut | a pan, then a cut to another scene in the middle of a block |
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from reftok_deploy.model import synthetic
from reftok_deploy.base.video import resize_short_side, to_rgb

MOVING_CASES = ("local_motion", "screen_text", "pan", "zoom", "fast_object", "cut")
STATIC_CASES = ("static", "static_noise")
CASES = STATIC_CASES + MOVING_CASES


def _still(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return to_rgb(image, "RGB")


def _camera(name: str, n: int, size: int, velocity: tuple[float, float], zoom: float = 0.0, spin: float = 0.0
            ) -> np.ndarray:
    image = resize_short_side(_still(name), int(1.6 * size))
    h, w = image.shape[:2]
    return synthetic.camera_path_clip(image, n, size, (w / 2, h / 2), velocity, zoom, spin)[0]


def _static(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return synthetic.static_clip(_still("retina"), n, size, rng)[0]


def _static_noise(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    clean = synthetic.static_clip(_still("hubble_deep_field"), n, size, rng)[0]
    return synthetic.add_sensor_noise(clean, 3.0, rng)


def _objects(n: int, size: int, rng: np.random.Generator, speed: float) -> np.ndarray:
    objects = [_still("logo"), _still("cell"), _still("hubble_deep_field")]
    return synthetic.objects_clip(_still("moon" if speed > 5 else "grass"), objects, n, size, rng, speed=speed)[0]


def _cut(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    first = _camera("hubble_deep_field", n, size, (1.5, 0.5))
    second = _camera("grass", n, size, (-1.0, 1.0))
    cut = n // 2 + n // 4  # inside the second block
    return np.concatenate([first[:cut], second[cut:]])


GENERATORS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "static": _static,
    "static_noise": _static_noise,
    "local_motion": lambda n, s, rng: _objects(n, s, rng, speed=3.0),
    "screen_text": lambda n, s, rng: synthetic.screen_clip(n, s, rng)[0],
    "pan": lambda n, s, rng: _camera("retina", n, s, (2.5, 1.0)),
    "zoom": lambda n, s, rng: _camera("moon", n, s, (0.0, 0.0), zoom=0.012, spin=0.15),
    "fast_object": lambda n, s, rng: _objects(n, s, rng, speed=10.0),
    "cut": _cut,
}


def suite_clips(size: int = 256, block_frames: int = 8, gops: int = 2, seed: int = 7,
                cases: tuple[str, ...] = CASES) -> dict[str, np.ndarray]:
    """``{"suite:<case>": [gops*(T+1),size,size,3] uint8}``, deterministic for a seed."""
    n = gops * (block_frames + 1)
    out = {}
    for name in cases:
        rng = np.random.default_rng([seed, CASES.index(name)])  # a case looks the same in any subset
        out[f"suite:{name}"] = np.ascontiguousarray(GENERATORS[name](n, size, rng))
    return out
