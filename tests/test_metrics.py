"""PSNR and the pixel <-> model-range conversions every backend and metric goes through."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from reftok_deploy.quality.metrics import PSNR_CAP_DB, psnr
from reftok_deploy.base.spec import FRAMES_IN, REFERENCE, encoder_feed, frames_to_tensor_range, tensor_range_to_frames


@pytest.mark.parametrize("shape", [(48, 64, 3), (8, 20, 24, 3), (7, 5)])
def test_psnr_is_scikit_images_value(shape):
    rng = np.random.default_rng(len(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-12, 13, shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-9)
    flipped = a[..., ::-1, :] if a.ndim > 2 else a[:, ::-1]  # a view that is not C-contiguous
    assert psnr(flipped, b) == pytest.approx(peak_signal_noise_ratio(np.ascontiguousarray(flipped), b,
                                                                    data_range=255), abs=1e-9)
    assert psnr(a, a.copy()) == PSNR_CAP_DB
    with pytest.raises(ValueError, match="two shapes"):
        psnr(a, b[:-1])


def test_conversions_are_the_exact_formulas_in_contiguous_layouts():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    x = frames_to_tensor_range(frames)
    want = np.moveaxis(frames.astype(np.float32) / 127.5 - 1.0, -1, -3)
    assert x.dtype == np.float32 and x.flags.c_contiguous and np.array_equal(x, want)
    assert np.array_equal(tensor_range_to_frames(x), frames)  # every level round-trips
    noisy = (x + rng.normal(0, 0.3, x.shape)).astype(np.float32)
    back = tensor_range_to_frames(noisy)
    want_back = np.clip((np.moveaxis(noisy, -3, -1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    assert back.flags.c_contiguous and np.array_equal(back, want_back)
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16).repeat(3, 0).transpose(1, 2, 0)
    assert np.array_equal(tensor_range_to_frames(frames_to_tensor_range(levels)), levels)


def test_encoder_feed_layout():
    rng = np.random.default_rng(1)
    reference = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    block = rng.integers(0, 256, (8, 16, 24, 3), dtype=np.uint8)
    feed = encoder_feed(reference, block)
    assert feed[REFERENCE.name].shape == (1, 3, 16, 24) and feed[FRAMES_IN.name].shape == (1, 3, 8, 16, 24)
    assert feed[FRAMES_IN.name].flags.c_contiguous
    assert np.array_equal(feed[FRAMES_IN.name][0, :, 5], frames_to_tensor_range(block[5]))
    assert np.array_equal(feed[REFERENCE.name][0], frames_to_tensor_range(reference))
