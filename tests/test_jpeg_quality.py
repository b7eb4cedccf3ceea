"""benchmarks.jpeg_quality: the quality a JPEG copy last went through."""

import numpy as np
import pytest

from benchmarks.jpeg_quality import _round_trip, likely_quality, requantisation_error


def _photo_like(count, seed=0):
    # Smooth gradients plus texture: what JPEG is built for (pure noise
    # would make every quality look alike).
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:32, 0:32]
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3) + rng.uniform(-3, 3, 3) * xs[..., None]
        base = base + rng.uniform(-3, 3, 3) * ys[..., None] + rng.normal(0, 12, (32, 32, 3))
        images.append(np.clip(base, 0, 255).astype(np.uint8))
    return np.stack(images)


@pytest.mark.parametrize("quality", [60, 75, 90])
def test_finds_the_quality_the_images_went_through(quality):
    encoded = np.stack([_round_trip(image, quality) for image in _photo_like(12)])
    errors = requantisation_error(encoded)
    assert likely_quality(errors) == quality
    assert list(errors) == [50, 60, 70, 75, 80, 85, 90, 95, 100]


def test_the_minimum_at_75_is_sharp():
    encoded = np.stack([_round_trip(image, 75) for image in _photo_like(12)])
    errors = requantisation_error(encoded)
    others = [error for quality, error in errors.items() if quality != 75]
    assert min(others) > 2 * errors[75]
    # Never re-encoded: a lossless copy changes most at the lowest quality.
    fresh = requantisation_error(_photo_like(12), qualities=(50, 100))
    assert fresh[50] > fresh[100]


def test_rejects_bad_input_with_the_value_in_the_message():
    with pytest.raises(ValueError, match="float64"):
        requantisation_error(np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="101"):
        requantisation_error(_photo_like(1), qualities=(75, 101))
