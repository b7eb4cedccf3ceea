"""A small own dataset as a user would have it: 4 classes (names with spaces),
45 images each, 24x24, PNG and JPEG, grayscale mixed with RGB; and a teacher
trained on it with plain Keras, saved ending in softmax."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
classes = ["red square", "green disc", "blue stripes", "grey noise"]
for c, name in enumerate(classes):
    folder = root / "my images" / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(45):
        img = rng.integers(0, 60, (24, 24, 3)).astype(np.uint8)
        yy, xx = np.mgrid[:24, :24]
        if c == 0:
            img[6:18, 6:18, 0] = 200 + rng.integers(0, 50)
        elif c == 1:
            img[((yy - 12) ** 2 + (xx - 12) ** 2) < 40, 1] = 210
        elif c == 2:
            img[:, ::4, 2] = 220
        else:
            img = np.repeat(rng.integers(80, 160, (24, 24, 1)), 3, axis=2).astype(np.uint8)
        pil = Image.fromarray(img)
        if i % 5 == 0:
            pil = pil.convert("L")  # some grayscale files
        pil.save(folder / (f"img {i}.png" if i % 2 else f"img {i}.jpg"))
print(root / "my images")
