"""Which JPEG quality a set of images last went through, if any.

    python -m benchmarks.jpeg_quality [--data PATH] [--images 300]
        [--split test|train]

JPEG quantises each 8x8 block's frequency coefficients with a table scaled
by the quality setting. Decoded pixels that came from a quality-q encoder
sit almost exactly on that grid again when re-encoded at q (only rounding
to 8-bit pixels moves them), while any other quality moves them by far
more. So re-encoding the images at every quality from 10 to 100 and
measuring the mean absolute pixel change gives a sharp minimum at the
quality last used. Images that were never JPEG-compressed show no sharp
minimum (the change then just falls as the
quality rises), and the answer is "none"; so are qualities of about 95
and above, which leave too little to tell apart. The encoder is Pillow's baseline
JPEG with its default 4:2:0 chroma subsampling, the common way image
exports are written.

This tells what a JPEG copy of a dataset went through (for CIFAR-10: how
its pixels differ from the official archive), not what that costs in
accuracy: that needs the original pixels. Reads the data with
`kd_keras.data.sources.load_source` (no Keras, unless CIFAR-10 has to be
downloaded).

Measured on the `../shared` copy of CIFAR-10 (first 300 test images,
2026-11-26): 0.16 levels at quality 75, at least 0.65 at every other
quality of 50, 60, ..., 100 (2.24 at 70, 1.94 at 80, 0.65 at 100): quality
75. Its chroma was subsampled 4:2:0: re-encoding at 75 with full-resolution
chroma (Pillow's `subsampling=0`) moves the pixels by 1.07 levels instead.
"""

import argparse
import io
import numbers
import sys

import numpy as np

QUALITIES = tuple(range(10, 101))
# A minimum counts as the quality used when its change is at most this
# fraction of the change at the qualities `_STEP` below and above it.
_SHARPNESS = 0.5
_STEP = 3


def _round_trip(image, quality):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def requantisation_error(images, qualities=QUALITIES):
    """Mean absolute pixel change when `images` are re-encoded at each quality.

    Args:
        images: uint8 array `(N, height, width, 3)`, N >= 1.
        qualities: JPEG qualities to try, ints in [1, 100].

    Returns:
        A dict `{quality: mean absolute change in 0..255 levels}`.

    Raises:
        ValueError: for an empty or non-uint8 image array or a quality
            outside [1, 100].
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise ValueError(
            "images must be a non-empty uint8 array of shape (N, height, width, 3), "
            f"got {images.dtype} {images.shape}"
        )
    qualities = list(qualities)
    bad = [
        q
        for q in qualities
        if isinstance(q, bool) or not isinstance(q, numbers.Integral) or not 1 <= q <= 100
    ]
    if bad or not qualities:
        raise ValueError(f"qualities must be ints in [1, 100], got {qualities!r}")
    errors = {}
    for quality in qualities:
        change = [
            np.abs(_round_trip(image, int(quality)).astype(np.int16) - image).mean()
            for image in images
        ]
        errors[int(quality)] = float(np.mean(change))
    return errors


def likely_quality(errors):
    """The quality the images last went through, or `None` if there is no
    sharp minimum (never JPEG-compressed, or at quality about 95 or above).

    The quality whose re-encoding changed the pixels least counts when its
    change is at most half the change at the qualities 3 below and 3 above
    it (both must have been tried).
    """
    best = min(errors, key=errors.get)
    around = [errors.get(best - _STEP), errors.get(best + _STEP)]
    if None in around or errors[best] > _SHARPNESS * min(around):
        return None
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.jpeg_quality",
        description="Estimate the JPEG quality a dataset's pixels last went through.",
    )
    parser.add_argument("--data", default=None, help="as kd_keras run --data")
    parser.add_argument("--images", type=int, default=300, help="the first N images (300)")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")

    from kd_keras.data.sources import load_source

    (x_train, _), (x_test, _), _ = load_source(args.data)
    images = (x_test if args.split == "test" else x_train)[: args.images]
    errors = requantisation_error(images)
    print(f"the first {len(images)} {args.split} images, re-encoded at each quality:")
    print("| quality | mean absolute change (levels) |\n|---|---|")
    for quality, error in errors.items():
        if quality % 5 == 0:
            print(f"| {quality} | {error:.3f} |")
    quality = likely_quality(errors)
    best = min(errors, key=errors.get)
    if quality is None:
        print(
            f"no clear JPEG quality: the smallest change, {errors[best]:.3f} levels at "
            f"{best}, is not a sharp minimum (never JPEG-compressed, or quality about 95 or above)"
        )
    else:
        print(f"likely quality: {quality} ({errors[quality]:.3f} levels)")
    return 0


if __name__ == "__main__":
    from kd_keras.errors import run_command

    sys.exit(run_command("benchmarks.jpeg_quality", main))
