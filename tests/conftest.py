"""Shared fixtures: the real CIFAR-10 archive and small fake archives."""

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests run TensorFlow's kernels as kd_keras's front ends do.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


# A test that uses one of these fixtures trains real models on real CIFAR-10
# (a smoke run, a search) or decodes the archive: it is marked `slow` and
# `real_data`, so `pytest -m "not slow"` trains nothing real. Any test that
# reads the archive is `real_data`.
SLOW_FIXTURES = frozenset({"smoke_run", "run_copy", "finished_search", "tiny_splits"})

# The tests' smallest real run: ResNet-8s of width 4, one epoch a stage,
# batch 50, on all of the data given (no per-class subsets).
TINY_RUN = dict(
    train_per_class=None,
    val_per_class=None,
    test_per_class=None,
    teacher_depth=8,
    teacher_width=4,
    student_depth=8,
    student_width=4,
    teacher_epochs=1,
    student_epochs=1,
    batch_size=50,
    verbose=0,
)


def tiny_config(**fields):
    """The smoke preset with `TINY_RUN`'s sizes; `fields` override any."""
    from kd_keras.config import RunConfig

    return RunConfig.from_dict({**RunConfig.from_preset("smoke").to_dict(), **TINY_RUN, **fields})


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "cifar10_archive" in used:
            item.add_marker(pytest.mark.real_data)
        if used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cifar10_archive():
    """The real CIFAR-10 archive, from $KD_KERAS_CIFAR10 (set by .ci/run)."""
    path = os.environ.get("KD_KERAS_CIFAR10")
    if not path:
        pytest.skip("set KD_KERAS_CIFAR10 to cifar-10-python.tar.gz to run real-data tests")
    assert Path(path).is_file(), f"KD_KERAS_CIFAR10={path} does not exist"
    return Path(path)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One decoded-dataset cache for the whole session, never ~/.cache."""
    return tmp_path_factory.mktemp("kd_cache")


@pytest.fixture(autouse=True)
def isolated_cache(shared_cache, monkeypatch):
    monkeypatch.setenv("KD_KERAS_CACHE", str(shared_cache))


def batch_bytes(num_images, seed, *, data=None, labels=None):
    rng = np.random.default_rng(seed)
    if data is None:
        data = rng.integers(0, 256, size=(num_images, 3072), dtype=np.uint8)
    if labels is None:
        labels = [int(i % 10) for i in range(num_images)]
    return pickle.dumps({b"batch_label": b"fake", b"labels": labels, b"data": data})


def write_fake_archive(path, num_images=20, *, replace=None, extra=()):
    """Writes a small archive in the official layout.

    Args:
        replace: {batch name: bytes} to put in place of a generated batch.
        extra: TarInfo members (with their bytes) to add, e.g. hostile ones.
    """
    replace = replace or {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(path, "w:gz") as tar:
        for index, name in enumerate(names):
            payload = replace.get(name) or batch_bytes(num_images, index)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return Path(path)


@pytest.fixture
def fake_archive(tmp_path):
    return write_fake_archive(tmp_path / "cifar-10-python.tar.gz")


@pytest.fixture(scope="session")
def smoke_run(cifar10_archive, tmp_path_factory, shared_cache):
    """One real `smoke` run on CIFAR-10, shared by the tests that read it."""
    os.environ["KD_KERAS_CACHE"] = str(shared_cache)
    from kd_keras import RunConfig, run_pipeline

    out = tmp_path_factory.mktemp("runs") / "smoke"
    config = RunConfig.from_preset("smoke", data=str(cifar10_archive), verbose=0)
    rows = run_pipeline(config, out)
    return out, rows
