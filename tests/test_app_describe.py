"""Tests of `kd_keras.data.describe.describe_source`: what the app shows under
its data field, from generated sources, without decoding the data."""

import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from app_smoke import REPO
from PIL import Image

from kd_keras.data import describe
from kd_keras.data.describe import describe_source
from kd_keras.errors import DataSourceError


def image_folder(root, classes, size=(20, 12), mode="RGB"):
    """`{class: count}` of solid images of `size` (width, height) under `root`."""
    for index, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            image_mode = mode if i % 2 == 0 else "L"  # Grayscale mixed with RGB.
            Image.new(image_mode, size, color=index * 10).save(root / name / f"{i}.png")
    return root


def test_an_image_folder_counted_per_class_with_its_size(tmp_path):
    root = image_folder(tmp_path / "pets", {"big cats": 5, "dogs": 3}, size=(20, 12))
    found = describe_source(root)
    assert (found.kind, found.classes, found.class_count) == ("folder", ("big cats", "dogs"), 2)
    assert (found.train_images, found.test_images, found.image_size) == (8, None, (20, 12))
    assert found.per_class == {"big cats": 5, "dogs": 3}
    assert found.summary() == (
        "image folder: 2 classes (big cats, dogs); 8 images (20% of each class held out "
        "for testing); 20x12 pixels."
    )


def test_train_and_test_folders_and_twenty_classes(tmp_path):
    names = {f"c{i:02d}": 2 for i in range(20)}
    image_folder(tmp_path / "d" / "train", names, size=(48, 48))
    image_folder(tmp_path / "d" / "test", {k: 1 for k in names}, size=(48, 48))
    found = describe_source(tmp_path / "d")
    assert (found.class_count, found.train_images, found.test_images) == (20, 40, 20)
    assert "20 classes (c00, c01, c02, c03, c04, c05, c06, c07, and 12 more)" in found.summary()
    assert "40 training + 20 test images; 48x48 pixels" in found.summary()


def test_mixed_sizes_are_reported(tmp_path):
    root = image_folder(tmp_path / "a", {"x": 2}, size=(16, 16))
    (tmp_path / "a" / "y").mkdir()
    Image.new("RGB", (24, 16)).save(tmp_path / "a" / "y" / "0.png")
    found = describe_source(root)
    assert found.mixed_sizes and found.image_size is None
    assert "different sizes (set an image size)" in found.summary()


def test_only_headers_are_read(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "a", {"x": 30, "y": 30})
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(p) or original(p, *a, **k))
    describe_source(root)
    assert len(opened) == 2  # The first image of each class, not 60.


def test_cifar10_from_its_path(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"")
    found = describe_source(archive)
    assert (found.kind, found.class_count, found.train_images, found.test_images) == (
        "cifar10",
        10,
        50_000,
        10_000,
    )
    assert found.image_size == (32, 32) and found.classes[0] == "airplane"
    batches = tmp_path / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (batches / "data_batch_1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataSourceError, match="symlink that leads out"):
        describe_source(batches)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataSourceError, match="not a data source"):
        describe_source(tmp_path / "notes.txt")


def test_npz_from_headers_and_small_labels(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    x = np.zeros((30, 24, 16, 3), np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(30) % 3, x_test=x[:6], y_test=np.arange(6) % 3)
    reads = []
    original = np.lib.format.read_array
    monkeypatch.setattr(
        np.lib.format, "read_array", lambda f, **k: reads.append(f.name) or original(f, **k)
    )
    found = describe_source(path)
    assert (found.kind, found.class_count, found.train_images, found.test_images) == (
        "npz",
        3,
        30,
        6,
    )
    assert found.image_size == (16, 24) and reads == ["y_train.npy"]  # No image array read.
    named = tmp_path / "n.npz"
    np.savez(named, x_train=x[:, :, :, 0], y_train=np.arange(30) % 2, class_names=["cat", "dog"])
    found = describe_source(named)
    assert (found.classes, found.test_images) == (("cat", "dog"), None)


def test_a_huge_npz_header_is_described_without_allocating(tmp_path):
    """A .npz whose x_train header claims 10 million 1024x1024 images (30 TB)
    and y_train 2**40 labels: described from the headers, in a subprocess
    under a 2 GB address-space limit, so a regression fails the test."""
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, shape, dtype in (
            ("x_train", (10_000_000, 1024, 1024, 3), np.uint8),
            ("y_train", (2**40,), np.int64),
        ):
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                header, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
            )
            archive.writestr(f"{name}.npy", header.getvalue())
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from kd_keras.data.describe import describe_source\n"
        f"found = describe_source({str(path)!r})\n"
        "print(found.train_images, found.class_count, found.image_size)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["10000000", "None", "(1024,", "1024)"]


def test_symlinks_out_of_the_folder_and_fifos_are_refused(tmp_path):
    outside = image_folder(tmp_path / "outside", {"secret": 1})
    root = image_folder(tmp_path / "data", {"a": 2, "b": 2})
    (root / "c").symlink_to(outside / "secret", target_is_directory=True)
    with pytest.raises(DataSourceError, match="symlink that leads out"):
        describe_source(root)
    (root / "c").unlink()
    (root / "a" / "9.png").symlink_to(outside / "secret" / "0.png")
    with pytest.raises(DataSourceError, match="symlink that leads out"):
        describe_source(root)
    (root / "a" / "9.png").unlink()
    os.mkfifo(root / "a" / "8.png")
    with pytest.raises(DataSourceError, match="FIFO"):
        describe_source(root)  # Refused, not a hang.


def test_layout_problems_are_one_line(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    root = image_folder(tmp_path / "d", {"a": 1})
    (root / "empty").mkdir()
    (root / "a" / "notes.txt").write_text("x")
    for path, words in (
        (tmp_path / "flat", "no class subfolders"),
        (root, "not an image file"),
        (tmp_path / "missing", "does not exist"),
    ):
        with pytest.raises(DataSourceError, match=words) as caught:
            describe_source(path)
        assert "\n" not in str(caught.value)
    (root / "a" / "notes.txt").unlink()
    with pytest.raises(DataSourceError, match=r"\['empty'\] hold no images"):
        describe_source(root)


def test_describe_is_keras_free():
    code = (
        "import sys\n"
        "import kd_keras.data.describe\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'})\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert describe.MAX_PEEKS >= 1
