"""Synthetic clips that look like real sources, with their true motion.

Every generator returns ``(frames [n,S,S,3] uint8 RGB, flow [n,S,S,2] float32)``: frame 0 is
the reference, and ``flow[k]`` is, per pixel of frame k, the (x, y) offset in pixels at which
the reference shows the same point (backward flow; ``flow[0]`` is zero). Where frame k shows
something the reference does not (uncovered background, new text, a cut), the flow is only a
best guess; training masks it by how well it explains the frame.

Kinds: ``static`` (a fixed camera, nothing moves), ``camera`` (pan / zoom / rotation),
``objects`` (a still background with objects moving over it; fast when ``speed`` is high),
``screen`` (rendered text with characters being typed), ``cut`` (a scene change inside the
block). :func:`add_sensor_noise` adds per-frame Gaussian noise to any of them.
"""

from __future__ import annotations

import math
import string

import cv2
import numpy as np

from reftok_deploy.base.video import resize_short_side

Clip = tuple[np.ndarray, np.ndarray]


def _crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    image = resize_short_side(image, int(rng.integers(size, max(size + 1, int(1.6 * size)))))
    h, w = image.shape[:2]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return np.ascontiguousarray(image[top : top + size, left : left + size])


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def static_clip(image: np.ndarray, n: int, size: int, rng: np.random.Generator) -> Clip:
    """A fixed camera on a still: n identical frames, zero flow."""
    frame = _crop(image, size, rng)
    return np.repeat(frame[None], n, axis=0), np.zeros((n, size, size, 2), np.float32)


def camera_clip(image: np.ndarray, n: int, size: int, rng: np.random.Generator, speed: float = 1.5) -> Clip:
    """Pan / zoom / rotation over a still, drawn at random; ``speed`` is the typical pan in px/frame."""
    image = resize_short_side(image, int(rng.integers(int(1.3 * size), max(int(1.3 * size) + 1, 2 * size))))
    h, w = image.shape[:2]
    centre = (rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2))
    return camera_path_clip(image, n, size, centre, tuple(rng.normal(0, speed, size=2)),
                            zoom_rate=rng.normal(0, 0.008), spin=rng.normal(0, 0.4))


def camera_path_clip(image: np.ndarray, n: int, size: int, centre: tuple[float, float],
                     velocity: tuple[float, float], zoom_rate: float = 0.0, spin: float = 0.0) -> Clip:
    """A camera path over ``image`` (already at working scale): pan ``velocity`` px/frame from ``centre``,
    zoom ``exp(zoom_rate)`` and ``spin`` degrees per frame; border pixels mirrored."""
    (cx, cy), (vx, vy) = centre, velocity
    mats = []
    for k in range(n):
        m = cv2.getRotationMatrix2D((cx + vx * k, cy + vy * k), spin * k, math.exp(zoom_rate * k))
        m[:, 2] += (size / 2 - (cx + vx * k), size / 2 - (cy + vy * k))
        mats.append(np.vstack([m, [0, 0, 1]]))
    frames = np.stack([cv2.warpAffine(image, m[:2], (size, size), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REFLECT101) for m in mats])
    xs, ys = _grid(size)
    points = np.stack([xs.ravel(), ys.ravel(), np.ones(size * size, np.float32)])
    flow = np.zeros((n, size, size, 2), np.float32)
    for k in range(1, n):
        # frame-k pixel -> still (inverse of mats[k]) -> reference pixel (mats[0]).
        mapped = mats[0] @ np.linalg.inv(mats[k]) @ points
        flow[k, ..., 0] = (mapped[0] - points[0]).reshape(size, size)
        flow[k, ..., 1] = (mapped[1] - points[1]).reshape(size, size)
    return frames, flow


def _sprite(image: np.ndarray, radius: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An elliptical cut-out ``[2r,2r,3]`` uint8 and its soft mask ``[2r,2r,1]`` float32 in [0,1]."""
    patch = _crop(image, 2 * radius, rng)
    mask = np.zeros((2 * radius, 2 * radius), np.float32)
    axes = (radius - 1, int(radius * rng.uniform(0.6, 1.0)) - 1)
    cv2.ellipse(mask, (radius, radius), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    return patch, mask[..., None]


def objects_clip(background: np.ndarray, objects: list[np.ndarray], n: int, size: int,
                 rng: np.random.Generator, speed: float = 3.0) -> Clip:
    """A still background (fixed camera) with 1-3 objects moving over it at ~``speed`` px/frame."""
    base = _crop(background, size, rng).astype(np.float32)
    frames = np.repeat(base[None], n, axis=0)
    flow = np.zeros((n, size, size, 2), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        radius = int(rng.integers(size // 10, size // 4))
        patch, mask = _sprite(objects[int(rng.integers(len(objects)))], radius, rng)
        pos = rng.uniform(0, size, size=2) - radius
        angle = rng.uniform(0, 2 * math.pi)
        vel = np.array([math.cos(angle), math.sin(angle)]) * speed * rng.uniform(0.3, 1.3)
        for k in range(n):
            x, y = pos + vel * k
            m = np.float32([[1, 0, x], [0, 1, y]])
            layer = cv2.warpAffine(patch, m, (size, size), flags=cv2.INTER_LINEAR).astype(np.float32)
            alpha = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_LINEAR)[..., None]
            frames[k] = frames[k] * (1 - alpha) + layer * alpha
            if k:
                inside = alpha[..., 0] > 0.5
                flow[k][inside] = -vel * k  # the object's point sat vel*k earlier in the reference
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8), flow


_WORDS = ["reftok", "token", "frame", "motion", "edge", "camera", "deploy", "export", "onnx", "tensor", "video",
          "block", "print", "return", "class", "while", "import", "numpy", "def", "self", "error", "value"]


def screen_clip(n: int, size: int, rng: np.random.Generator) -> Clip:
    """A screen with text (rendered), characters being typed over the block, sometimes a scroll."""
    dark = rng.random() < 0.3
    bg = np.array([30, 30, 36] if dark else [250, 250, 248], np.uint8)
    colours = [(220, 220, 220), (120, 200, 255), (250, 180, 90)] if dark else [(20, 20, 20), (30, 60, 160), (160, 30, 30)]
    scale = rng.uniform(0.35, 0.6)
    line_h = int(28 * scale) + 4
    lines = []
    for _ in range(size // line_h + 2):
        words = [_WORDS[int(i)] if rng.random() < 0.7 else "".join(rng.choice(list(string.ascii_letters + "0123456789"), 4))
                 for i in rng.integers(0, len(_WORDS), size=6)]
        lines.append(" ".join(words))
    canvas_h = size + 40
    def render(typed: int, last_line: int) -> np.ndarray:
        img = np.empty((canvas_h, size, 3), np.uint8)
        img[:] = bg
        for i, text in enumerate(lines[: last_line + 1]):
            shown = text if i < last_line else text[:typed]
            cv2.putText(img, shown, (4, (i + 1) * line_h), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        colours[i % len(colours)], 1, cv2.LINE_AA)
        return img
    last_line = int(rng.integers(1, max(2, size // line_h - 1)))
    chars_per_frame = int(rng.integers(1, 4))
    scroll = int(rng.integers(1, 4)) if rng.random() < 0.25 else 0
    frames = np.stack([render(k * chars_per_frame, last_line)[k * scroll : k * scroll + size] for k in range(n)])
    flow = np.zeros((n, size, size, 2), np.float32)
    for k in range(n):
        flow[k, ..., 1] = k * scroll
    return frames, flow


def cut_clip(first: Clip, second: Clip, rng: np.random.Generator) -> Clip:
    """Frames of ``first`` up to a cut inside the block, then ``second``'s."""
    n = len(first[0])
    cut = int(rng.integers(2, n))
    frames = np.concatenate([first[0][:cut], second[0][cut:]])
    flow = np.concatenate([first[1][:cut], np.zeros_like(second[1][cut:])])
    return frames, flow


def add_sensor_noise(frames: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Independent Gaussian noise (``sigma`` in 8-bit levels) on every frame, reference included."""
    noisy = frames.astype(np.float32) + rng.normal(0, sigma, size=frames.shape).astype(np.float32)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def dis_flow(frames: np.ndarray) -> np.ndarray:
    """Backward flow frame k -> reference with OpenCV's DIS (for real video): ``[n,H,W,2]`` float32."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    ref = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    flow = np.zeros((*frames.shape[:3], 2), np.float32)
    for k in range(1, len(frames)):
        flow[k] = dis.calc(cv2.cvtColor(frames[k], cv2.COLOR_RGB2GRAY), ref, None)
    return flow
