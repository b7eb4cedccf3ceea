import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from conftest import batch_bytes, write_fake_archive

from kd_keras.data.cifar10 import load_cifar10
from kd_keras.data.splits import make_dataset, per_class_subset, prepare_splits, stratified_split
from kd_keras.errors import DatasetError


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_archive_loads_like_keras_load_data(cifar10_archive, shared_cache):
    before = sha256(cifar10_archive)
    (x_train, y_train), (x_test, y_test) = load_cifar10(cifar10_archive, cache_dir=shared_cache)
    assert x_train.shape == (50000, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 32, 32, 3) and y_test.shape == (10000,)
    assert np.bincount(y_train).tolist() == [5000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    # Channel-major rows become NHWC: compare with the raw first test row.
    with tarfile.open(cifar10_archive) as tar:
        raw = pickle.load(tar.extractfile("cifar-10-batches-py/test_batch"), encoding="bytes")
    np.testing.assert_array_equal(x_test[0], raw[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert y_test[0] == raw[b"labels"][0]
    assert sha256(cifar10_archive) == before  # The source is only read.
    assert list(shared_cache.glob("cifar10-*.npz"))  # The decoded cache.


def test_cached_load_equals_first_load(fake_archive, tmp_path, monkeypatch):
    from kd_keras.data import cifar10

    first = load_cifar10(fake_archive, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    def no_archive_read(archive):
        raise AssertionError("the archive was read again instead of the cache")

    monkeypatch.setattr(cifar10, "_read_archive", no_archive_read)
    second = load_cifar10(fake_archive, cache_dir=tmp_path / "cache")
    (x_train, y_train), (x_test, y_test) = second
    for a, b in zip((*first[0], *first[1]), (x_train, y_train, x_test, y_test)):
        np.testing.assert_array_equal(a, b)
    assert y_test.tolist() == [i % 10 for i in range(20)]
    assert x_train.shape == (100, 32, 32, 3)


def test_extracted_folder_and_env_var_sources(fake_archive, tmp_path, monkeypatch):
    with tarfile.open(fake_archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    from_folder = load_cifar10(tmp_path / "extracted")
    monkeypatch.setenv("KD_KERAS_CIFAR10", str(fake_archive))
    from_env = load_cifar10()
    np.testing.assert_array_equal(from_folder[0][0], from_env[0][0])
    assert from_folder[0][0].shape == (100, 32, 32, 3)
    assert from_folder[1][1].tolist() == [i % 10 for i in range(20)]


def assert_refused(source, cache_dir, *fragments):
    with pytest.raises(DatasetError) as info:
        load_cifar10(source, cache_dir=cache_dir)
    message = str(info.value)
    for fragment in (str(source), "KD_KERAS_CIFAR10", *fragments):
        assert fragment in message, message
    # No half-written cache survives the failure.
    assert not list(cache_dir.glob("*")) if cache_dir.exists() else True
    return message


def test_missing_source_names_path_and_ways_to_provide(tmp_path):
    assert_refused(tmp_path / "nope.tar.gz", tmp_path / "cache", "no such file")


def test_not_an_archive_is_refused(tmp_path):
    bogus = tmp_path / "cifar.tar.gz"
    bogus.write_text("this is not a tar file")
    assert_refused(bogus, tmp_path / "cache", "not a readable tar.gz")


def test_truncated_archive_is_refused(fake_archive, tmp_path):
    data = fake_archive.read_bytes()
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    assert_refused(truncated, tmp_path / "cache", "truncated or corrupt")


def test_archive_member_escaping_its_folder_is_refused(tmp_path):
    info = tarfile.TarInfo("../../evil.txt")
    info.size = 4
    archive = write_fake_archive(tmp_path / "evil.tar.gz", extra=[(info, b"evil")])
    assert_refused(archive, tmp_path / "cache", "escapes")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_archive_with_symlink_is_refused(tmp_path):
    info = tarfile.TarInfo("cifar-10-batches-py/link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    archive = write_fake_archive(tmp_path / "link.tar.gz", extra=[(info, None)])
    assert_refused(archive, tmp_path / "cache", "link")


def test_batch_of_wrong_shape_is_refused(tmp_path):
    wrong = batch_bytes(5, 0, data=np.zeros((5, 100), np.uint8))
    archive = write_fake_archive(tmp_path / "a.tar.gz", replace={"data_batch_3": wrong})
    assert_refused(archive, tmp_path / "cache", "data_batch_3", "(N, 3072)")


def test_labels_out_of_range_are_refused(tmp_path):
    wrong = batch_bytes(5, 0, labels=[0, 1, 2, 3, 12])
    archive = write_fake_archive(tmp_path / "a.tar.gz", replace={"test_batch": wrong})
    assert_refused(archive, tmp_path / "cache", "labels must lie in [0, 9]", "[0, 12]")


def test_pickle_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    archive = write_fake_archive(
        tmp_path / "a.tar.gz", replace={"data_batch_1": pickle.dumps(Exploit())}
    )
    assert_refused(archive, tmp_path / "cache", "forbidden global")
    assert not os.path.exists("pwned")


def test_archive_without_batches_is_refused(tmp_path):
    archive = tmp_path / "empty.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert_refused(archive, tmp_path / "cache", "lacks cifar-10-batches-py/data_batch_1")


def test_stratified_split_is_balanced_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    taken, rest = stratified_split(labels, 100, seed=3)
    assert np.bincount(labels[taken]).tolist() == [10] * 10
    assert len(np.intersect1d(taken, rest)) == 0 and len(taken) + len(rest) == 500
    np.testing.assert_array_equal(taken, stratified_split(labels, 100, seed=3)[0])
    assert not np.array_equal(taken, stratified_split(labels, 100, seed=4)[0])
    with pytest.raises(ValueError, match="got 501"):
        stratified_split(labels, 501, seed=0)


def test_per_class_subset_caps_each_class():
    labels = np.repeat(np.arange(10), 7)
    keep = per_class_subset(labels, 3, seed=0)
    assert np.bincount(labels[keep]).tolist() == [3] * 10


def test_prepare_splits_carves_validation_from_training(fake_archive):
    splits = prepare_splits(fake_archive, val_size=20, seed=0)
    assert len(splits["train"][1]) == 80 and len(splits["val"][1]) == 20
    assert np.bincount(splits["val"][1]).tolist() == [2] * 10
    assert len(splits["test"][1]) == 20
    sub = prepare_splits(fake_archive, val_size=20, train_per_class=3, test_per_class=1, seed=0)
    assert len(sub["train"][1]) == 30 and len(sub["test"][1]) == 10


def test_training_pipeline_augments_reproducibly_and_eval_is_exact():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(16) % 10

    def first_epoch(seed):
        batches = list(make_dataset(images, labels, batch_size=8, training=True, seed=seed))
        return np.concatenate([b[0].numpy() for b in batches]), np.concatenate(
            [b[1].numpy() for b in batches]
        )

    x1, y1 = first_epoch(7)
    x2, y2 = first_epoch(7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.dtype == np.float32 and x1.shape == (16, 32, 32, 3)
    assert sorted(y1.tolist()) == sorted(labels.tolist())
    # Each augmented image is a 32x32 crop of a 4-pixel zero-padded,
    # possibly flipped, original; and most differ from their original.
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0))).astype(np.float32)
    crops = {
        (i, flip, dy, dx)
        for i in range(16)
        for flip in (False, True)
        for dy in range(9)
        for dx in range(9)
    }

    def is_crop(x):
        return any(
            np.array_equal(
                x,
                (padded[i, :, ::-1] if flip else padded[i])[dy : dy + 32, dx : dx + 32],
            )
            for i, flip, dy, dx in crops
            if labels[i] in y1
        )

    assert all(is_crop(x) for x in x1[:4])
    unchanged = sum(any(np.array_equal(x, o) for o in images.astype(np.float32)) for x in x1)
    assert unchanged < 8
    evaluation = np.concatenate(
        [b[0].numpy() for b in make_dataset(images, labels, batch_size=8, training=False)]
    )
    np.testing.assert_array_equal(evaluation, images.astype(np.float32))


def test_batch_augmentation_is_an_exact_uniform_crop_and_flip_of_every_image():
    import tensorflow as tf

    from kd_keras.data.splits import batch_augmenter

    # Each pixel holds its own row and column, so every output image tells
    # where it was cropped and whether it was flipped.
    count = 2000
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    image = np.stack([rows + 10, cols + 10, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    images = np.repeat(image[np.newaxis], count, axis=0)
    labels = np.arange(count) % 10
    augment = batch_augmenter((32, 32, 3))
    seed = tf.constant([3, 4], tf.int64)
    out, out_labels = augment((tf.constant(images), tf.constant(labels)), seed)
    out = out.numpy()
    assert out.dtype == np.float32 and out.shape == (count, 32, 32, 3)
    np.testing.assert_array_equal(out_labels, labels)
    padded = np.pad(images[0], ((4, 4), (4, 4), (0, 0))).astype(np.float32)
    seen = set()
    for x in out:
        matches = [
            (flip, dy, dx)
            for flip, source in ((False, padded), (True, padded[:, ::-1]))
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(x, source[dy : dy + 32, dx : dx + 32])
        ]
        assert len(matches) == 1, "not a crop of the padded image"
        seen.add(matches[0])
    # All 2 x 81 crops occur (each has about 12 expected hits in 2000).
    assert len(seen) == 2 * 81
    again = augment((tf.constant(images), tf.constant(labels)), seed)[0].numpy()
    np.testing.assert_array_equal(out, again)
    other = augment((tf.constant(images), tf.constant(labels)), seed + 1)[0].numpy()
    assert not np.array_equal(out, other)


def test_pipelines_run_without_tf_data_autotuning():
    # Autotuning's background thread made every iterator's destruction
    # wait (8-55 s at the end of each fit on one core).
    from kd_keras.distill.teacher_cache import with_teacher_logits

    images = np.zeros((8, 32, 32, 3), np.uint8)
    labels = np.arange(8) % 10
    train = make_dataset(images, labels, batch_size=4, training=True, epochs=2)
    val = make_dataset(images, labels, batch_size=4, training=False)
    replayed = with_teacher_logits(val, lambda x, training: x[:, 0, 0, :])
    for dataset in (train, val, replayed):
        assert dataset.options().autotune.enabled is False
    assert len(list(train)) == 4 and len(list(replayed)) == 2


def test_epoch_batches_depend_only_on_seed_and_epoch_so_resume_is_exact():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 10

    def batches(**kwargs):
        dataset = make_dataset(images, labels, batch_size=8, training=True, seed=5, **kwargs)
        return [(x.numpy(), y.numpy()) for x, y in dataset]

    full = batches(epochs=3)
    assert len(full) == 3 * 3  # ceil(20 / 8) batches per epoch.
    resumed = batches(epochs=3, start_epoch=2)
    for (xa, ya), (xb, yb) in zip(full[6:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Epochs differ from each other, and another seed gives other batches.
    assert not np.array_equal(full[0][1], full[3][1])
    other = make_dataset(images, labels, batch_size=8, training=True, seed=6, epochs=1)
    assert not np.array_equal(next(iter(other))[1].numpy(), full[0][1])


def test_epoch_datasets_work_under_a_global_seed():
    import keras

    keras.utils.set_random_seed(0)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    dataset = make_dataset(images, np.arange(4), batch_size=2, training=True, seed=1, epochs=2)
    assert len(list(dataset)) == 4


# --- Bounded reads and special files. ---


def _in_thread(function, timeout=60):
    """Runs `function`, failing (instead of hanging the suite) if it blocks."""
    import threading

    outcome = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as error:  # Handed to the test below.
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"blocked for {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_fifo_as_data_is_refused_at_once(tmp_path):
    fifo = tmp_path / "cifar-10-python.tar.gz"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match="not a regular file or folder"):
        _in_thread(lambda: load_cifar10(fifo, cache_dir=tmp_path / "cache"))
    with pytest.raises(DatasetError, match="not a regular file or folder"):
        _in_thread(lambda: prepare_splits(fifo))


def test_fifo_in_place_of_a_batch_file_is_refused_at_once(fake_archive, tmp_path):
    with tarfile.open(fake_archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    batch = tmp_path / "extracted" / "cifar-10-batches-py" / "data_batch_2"
    batch.unlink()
    os.mkfifo(batch)
    with pytest.raises(DatasetError, match="data_batch_2.*not a regular file"):
        _in_thread(lambda: load_cifar10(tmp_path / "extracted"))


def test_oversized_archive_member_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import tracemalloc

    from kd_keras.data import cifar10 as data

    # An 8 MB member that gzip squeezes into a few KB, under a 1 MB limit:
    # the same shape as a 2 MB archive whose batch claims 2 GB.
    big = write_fake_archive(
        tmp_path / "bomb.tar.gz",
        replace={
            "data_batch_1": batch_bytes(
                8 * 1024 * 1024 // 3072, 0, data=np.zeros((8 * 1024 * 1024 // 3072, 3072), np.uint8)
            ),
        },
    )
    assert big.stat().st_size < 1 << 20  # Smaller than the limit it breaks.
    monkeypatch.setattr(data, "MAX_BATCH_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as info:
            load_cifar10(big, cache_dir=tmp_path / "cache")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "member 'cifar-10-batches-py/data_batch_1' of 8,39" in message
    assert "more than a CIFAR-10 batch can have (1,048,576)" in message
    assert peak < 2 << 20, peak  # Never decompressed into memory.


def test_archive_with_too_many_members_is_refused(tmp_path, monkeypatch):
    from kd_keras.data import cifar10 as data

    extra = []
    for index in range(5):
        info = tarfile.TarInfo(f"cifar-10-batches-py/junk{index}")
        info.size = 1
        extra.append((info, b"x"))
    archive = write_fake_archive(tmp_path / "a.tar.gz", extra=extra)
    monkeypatch.setattr(data, "MAX_ARCHIVE_MEMBERS", 8)
    assert_refused(archive, tmp_path / "cache", "more than 8 members")


def test_oversized_files_are_refused_by_their_size(fake_archive, tmp_path, monkeypatch):
    from kd_keras.data import cifar10 as data

    with tarfile.open(fake_archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    monkeypatch.setattr(data, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(DatasetError, match="data_batch_1.*61,679 bytes, more than"):
        load_cifar10(tmp_path / "extracted")
    monkeypatch.setattr(data, "MAX_ARCHIVE_BYTES", 1000)
    assert_refused(fake_archive, tmp_path / "cache", "archive has", "more than a CIFAR-10")


# --- Cache leftovers and settings. ---


def test_half_written_cache_of_a_killed_writer_is_removed(fake_archive, tmp_path):
    import fcntl

    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".tmp-k1ll3d.npz"
    stale.write_bytes(b"half of a cache")  # What a kill mid-write leaves.
    writing = cache / ".tmp-l1ve.npz"
    writing.write_bytes(b"being written")
    with open(writing, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)  # A live writer holds its temporary file.
        load_cifar10(fake_archive, cache_dir=cache)
        assert not stale.exists() and writing.exists()
    assert len(list(cache.glob("cifar10-*.npz"))) == 1
    load_cifar10(fake_archive, cache_dir=cache)  # Its writer is gone now.
    assert not writing.exists()


def test_empty_cache_variable_means_the_default_not_the_current_folder(monkeypatch):
    from pathlib import Path

    from kd_keras.data.cifar10 import default_cache_dir

    monkeypatch.setenv("KD_KERAS_CACHE", "")
    assert default_cache_dir() == Path.home() / ".cache" / "kd_keras"
    monkeypatch.setenv("KD_KERAS_CACHE", "  ")
    assert default_cache_dir() == Path.home() / ".cache" / "kd_keras"


# --- Requests larger than the data: refused, not silently shrunk. ---


def test_per_class_requests_beyond_the_data_name_the_available_count(fake_archive):
    from kd_keras.errors import ConfigError

    # The fake archive: 10 training images per class; 2 per class go to validation.
    with pytest.raises(
        ConfigError,
        match=r"--train-per-class 9 > the 8 training images \(after the validation split\) "
        r"of the largest class \(at most 8, or all\)",
    ):
        prepare_splits(fake_archive, val_size=20, train_per_class=9)
    with pytest.raises(ConfigError, match="--val-per-class 3 > the 2 validation images"):
        prepare_splits(fake_archive, val_size=20, val_per_class=3)
    with pytest.raises(ConfigError, match="--test-per-class 3 > the 2 test images"):
        prepare_splits(fake_archive, val_size=20, test_per_class=3)
    with pytest.raises(ConfigError, match="--val-size 100 leaves no training image in class"):
        prepare_splits(fake_archive, val_size=100)
    assert len(prepare_splits(fake_archive, val_size=20, train_per_class=8)["train"][1]) == 80


def test_every_size_conflict_is_named_by_its_flag_in_one_line(fake_archive):
    from kd_keras.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        prepare_splits(
            fake_archive,
            val_size=100,
            train_per_class=50,
            val_per_class=20,
            test_per_class=5,
            batch_size=1000,
        )
    message = str(info.value)
    assert "\n" not in message and len(message) < 800
    for flag in ("--val-size 100", "--train-per-class 50", "--val-per-class 20"):
        assert flag in message
    assert "--test-per-class 5 > the 2 test images" in message
    # The batch is checked against the training images the default split leaves.
    assert "--batch-size 1000 > the 90 training images (at most 90)" in message


def test_sizes_that_follow_the_data_are_resolved_and_all_means_every_image(fake_archive):
    default = prepare_splits(fake_archive)
    # A tenth of the 100 training images, every other image.
    assert default["sizes"] == {
        "val_size": 10,
        "train_per_class": 9,
        "val_per_class": 1,
        "test_per_class": 2,
    }
    assert [len(default[k][1]) for k in ("train", "val", "test")] == [90, 10, 20]
    every = prepare_splits(
        fake_archive, val_size="all", train_per_class=6, val_per_class="all", test_per_class="all"
    )
    assert every["sizes"]["val_size"] == 40  # Every image the 6 a class leave.
    assert [len(every[k][1]) for k in ("train", "val", "test")] == [60, 40, 20]
    # The resolved ints select exactly what the choices selected.
    again = prepare_splits(fake_archive, **every["sizes"])
    for name in ("train", "val", "test"):
        assert np.array_equal(again[name][1], every[name][1])
        assert np.array_equal(again[name][0], every[name][0])
    from kd_keras.errors import ConfigError

    with pytest.raises(ConfigError, match="--val-size all .* needs --train-per-class N"):
        prepare_splits(fake_archive, val_size="all")


def test_data_modules_that_need_no_keras_import_none():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import kd_keras.config, kd_keras.data.sources, kd_keras.data.fingerprint\n"
        "import kd_keras.data.cifar10\n"
        "bad = [m for m in ('keras', 'tensorflow') if m in sys.modules]\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr[-500:]
