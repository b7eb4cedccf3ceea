"""benchmarks.jpeg_quality: the quality a JPEG copy last went through."""

import numpy as np
import pytest

from benchmarks.jpeg_quality import (
    QUALITIES,
    _round_trip,
    likely_quality,
    main,
    requantisation_error,
)


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


def _encoded(quality):
    return np.stack([_round_trip(image, quality) for image in _photo_like(8)])


@pytest.mark.parametrize("quality", [40, 72, 75, 90])
def test_finds_the_quality_the_images_went_through(quality):
    errors = requantisation_error(_encoded(quality))
    assert list(errors) == list(QUALITIES) == list(range(10, 101))
    assert likely_quality(errors) == quality


def test_no_quality_for_images_never_compressed_or_at_high_quality():
    assert likely_quality(requantisation_error(_photo_like(8))) is None
    assert likely_quality(requantisation_error(_encoded(98))) is None


def test_the_minimum_at_75_is_sharp():
    errors = requantisation_error(_encoded(75), qualities=(50, 70, 75, 80, 100))
    others = [error for quality, error in errors.items() if quality != 75]
    assert min(others) > 2 * errors[75]


def test_qualities_may_be_any_iterable_of_integers():
    errors = requantisation_error(_encoded(75), qualities=(q for q in np.array([72, 75, 78])))
    assert list(errors) == [72, 75, 78] and all(type(q) is int for q in errors)
    assert likely_quality(errors) == 75


def test_rejects_bad_input_with_the_value_in_the_message():
    with pytest.raises(ValueError, match="float64"):
        requantisation_error(np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="101"):
        requantisation_error(_photo_like(1), qualities=(75, 101))
    with pytest.raises(ValueError, match=r"got \[\]"):
        requantisation_error(_photo_like(1), qualities=())


def test_command_reads_npz_data(tmp_path, capsys):
    images = _encoded(60)
    labels = np.arange(len(images)) % 2
    np.savez(tmp_path / "d.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    assert main(["--data", str(tmp_path / "d.npz"), "--images", "5"]) == 0
    out = capsys.readouterr().out
    assert "the first 5 test images" in out
    assert out.strip().splitlines()[-1].startswith("likely quality: 60 (")
