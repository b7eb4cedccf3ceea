"""Which JPEG quality a set of images last went through.

    python -m benchmarks.jpeg_quality [--data PATH] [--images 300]
        [--split test|train]

JPEG quantises each 8x8 block's frequency coefficients with a table scaled
by the quality setting. Decoded pixels that came from a quality-q encoder
sit almost exactly on that grid again when re-encoded at q (only rounding
to 8-bit pixels moves them), while any other quality moves them by far
more. So re-encoding a sample at every candidate quality and measuring the
mean absolute pixel change has a sharp minimum at the quality last used.
The encoder is Pillow's baseline JPEG with its default 4:2:0 chroma
subsampling, the common way image exports are written.

This tells what a JPEG copy of a dataset went through (for CIFAR-10: how
its pixels differ from the official archive), not what that costs in
accuracy: that needs the original pixels. Keras-free; reads the data with
`kd_keras.data.sources.load_source`.

Measured on the `../shared` copy of CIFAR-10 (first 300 test images,
2026-11-26): 0.16 levels at quality 75, at least 0.65 at every other
quality tried (2.24 at 70, 1.94 at 80, 0.65 at 100): quality 75. Its
chroma was subsampled 4:2:0: re-encoding at 75 with full-resolution chroma
(Pillow's `subsampling=0`) moves the pixels by 1.07 levels instead.
"""

import argparse
import io

import numpy as np

QUALITIES = (50, 60, 70, 75, 80, 85, 90, 95, 100)


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
    bad = [
        q for q in qualities if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= 100
    ]
    if bad or not qualities:
        raise ValueError(f"qualities must be ints in [1, 100], got {list(qualities)!r}")
    errors = {}
    for quality in qualities:
        change = [
            np.abs(_round_trip(image, quality).astype(np.int16) - image).mean() for image in images
        ]
        errors[quality] = float(np.mean(change))
    return errors


def likely_quality(errors):
    """The quality whose re-encoding changed the pixels least."""
    return min(errors, key=errors.get)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.jpeg_quality",
        description="Estimate the JPEG quality a dataset's pixels last went through.",
    )
    parser.add_argument("--data", default=None, help="as kd_keras run --data")
    parser.add_argument("--images", type=int, default=300, help="images to sample (default 300)")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")

    from kd_keras.data.sources import load_source

    (x_train, _), (x_test, _), _ = load_source(args.data)
    images = x_test if args.split == "test" else x_train
    errors = requantisation_error(images[: args.images])
    print("| quality | mean absolute change (levels) |\n|---|---|")
    for quality, error in errors.items():
        print(f"| {quality} | {error:.3f} |")
    print(f"likely quality: {likely_quality(errors)}")


if __name__ == "__main__":
    main()
