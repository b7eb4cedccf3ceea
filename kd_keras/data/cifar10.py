"""CIFAR-10 loading: the official archive or folder, read safely and cached.

The loader reads the official "python version" archive
(`cifar-10-python.tar.gz`) or its extracted `cifar-10-batches-py/` folder
without downloading anything, so tests and CI run offline. The archive is
never extracted into the user's folder: its batches are read straight out of
the tar stream and cached as one `.npz` file in a cache folder, written under
a temporary name and renamed, so a failure never leaves a half-written cache
(and a writer killed mid-write leaves a temporary file that the next load
removes).

Every read is bounded before it happens: the source must be a regular file
or a folder (a FIFO or device is refused, it could block forever), an
archive at most `MAX_ARCHIVE_BYTES` with at most `MAX_ARCHIVE_MEMBERS`
members, and each batch at most `MAX_BATCH_BYTES` (a full CIFAR batch of
10,000 images is about 31 MB), checked from the tar header or the file's
size before a byte of it is read.
"""

import fcntl
import hashlib
import io
import os
import pickle
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from kd_keras.errors import DatasetError
from kd_keras.text import clip

# Environment variables: where CIFAR-10 is, and where its decoded cache goes.
DATA_ENV_VAR = "KD_KERAS_CIFAR10"
CACHE_ENV_VAR = "KD_KERAS_CACHE"

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Bounds on what the loader reads. The official archive is 170.5 MB with 9
# members; its batches are 31.0 MB (10,000 images of 3,072 bytes, labels and
# file names, pickled).
MAX_BATCH_BYTES = 10_000 * 3072 + (1 << 20)
MAX_ARCHIVE_BYTES = 512 << 20
MAX_ARCHIVE_MEMBERS = 64
# Per-channel statistics of the CIFAR-10 training set, in 0..255 pixel units.
CIFAR10_MEAN = (125.3, 123.0, 113.9)
CIFAR10_STD = (63.0, 62.1, 66.7)

_BATCH_DIR = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and NumPy arrays.

    CIFAR-10 batches are pickles; a hostile file could otherwise run code.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def _parse_batch(raw, where):
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # Any unpickling failure means a bad file.
        raise DatasetError(where, f"not a CIFAR-10 batch ({error})") from None
    if not isinstance(batch, dict):
        raise DatasetError(where, "not a CIFAR-10 batch (no dict inside)")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(where, "batch has no 'data' or 'labels' entry")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(
            where,
            f"batch 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}",
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise DatasetError(
            where,
            f"batch has {len(data)} images but labels of shape {labels.shape}",
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DatasetError(
            where,
            f"labels must lie in [0, {NUM_CLASSES - 1}], got [{labels.min()}, {labels.max()}]",
        )
    # Channel-major rows (R plane, G plane, B plane) -> NHWC images.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _concat(batches):
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return images, labels


def _open_regular(path, max_bytes, what="file"):
    """Opens `path` for reading if it is a regular file of at most `max_bytes`.

    Opened without blocking (a FIFO would otherwise wait for a writer
    forever) and checked on the open descriptor, so the path cannot be
    swapped for something else between the check and the read.

    Returns:
        `(file, size)`: a binary file object and its size in bytes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise DatasetError(path, f"cannot read the {what} ({error.strerror or error})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise DatasetError(
            path,
            f"the {what} is not a regular file (a FIFO, socket or device): refusing to read it",
        )
    if info.st_size > max_bytes:
        os.close(fd)
        raise DatasetError(
            path,
            f"the {what} has {info.st_size:,} bytes, more than a CIFAR-10 "
            f"{what} can have ({max_bytes:,})",
        )
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb"), info.st_size


def _load_from_folder(folder):
    folder = Path(folder)
    if (folder / _BATCH_DIR).is_dir():
        folder = folder / _BATCH_DIR
    batches = []
    for name in _TRAIN_BATCHES + (_TEST_BATCH,):
        path = folder / name
        if not path.exists():
            raise DatasetError(folder, f"missing batch file '{name}'")
        file, _ = _open_regular(path, MAX_BATCH_BYTES, "batch file")
        with file:
            raw = file.read()
        batches.append(_parse_batch(raw, path))
    return _concat(batches[:5]), batches[5]


def _check_member(member, archive):
    name = member.name
    parts = Path(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or os.path.isabs(name):
        raise DatasetError(
            archive, f"refusing archive member '{clip(name)}' that escapes its folder"
        )
    if member.issym() or member.islnk():
        raise DatasetError(
            archive, f"refusing link member '{clip(name)}' (archives may not hold links)"
        )
    if not (member.isfile() or member.isdir()):
        raise DatasetError(archive, f"refusing special archive member '{clip(name)}'")
    if member.size > MAX_BATCH_BYTES:
        # Checked from the header, before the member is read or skipped.
        raise DatasetError(
            archive,
            f"refusing archive member '{clip(name)}' of {member.size:,} bytes, more than "
            f"a CIFAR-10 batch can have ({MAX_BATCH_BYTES:,})",
        )


def _read_archive(archive):
    """Reads the six batches out of the tar stream, validating every member."""
    wanted = {f"{_BATCH_DIR}/{n}" for n in _TRAIN_BATCHES + (_TEST_BATCH,)}
    found = {}
    source, _ = _open_regular(archive, MAX_ARCHIVE_BYTES, "archive")
    try:
        with source, tarfile.open(fileobj=source, mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise DatasetError(
                        archive,
                        f"the archive has more than {MAX_ARCHIVE_MEMBERS} "
                        "members; the official one has 9",
                    )
                _check_member(member, archive)
                name = member.name.lstrip("./")
                if name in wanted:
                    if name in found:
                        raise DatasetError(archive, f"the archive holds '{clip(name)}' twice")
                    found[name] = tar.extractfile(member).read()
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DatasetError(
            archive, f"not a readable tar.gz archive, truncated or corrupt ({error})"
        ) from None
    missing = sorted(wanted - set(found))
    if missing:
        raise DatasetError(archive, f"archive lacks {', '.join(missing)}")
    batches = [
        _parse_batch(found[f"{_BATCH_DIR}/{n}"], f"{archive}:{n}")
        for n in _TRAIN_BATCHES + (_TEST_BATCH,)
    ]
    return _concat(batches[:5]), batches[5]


def default_cache_dir():
    """The folder that holds kd_keras's decoded dataset cache.

    `$KD_KERAS_CACHE` if set and not empty, else `~/.cache/kd_keras`. (An
    empty value is "unset", not the current folder.)
    """
    value = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "kd_keras"


def _file_digest(path):
    file, _ = _open_regular(path, MAX_ARCHIVE_BYTES, "archive")
    digest = hashlib.sha256()
    with file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_TEMP_PREFIX = ".tmp-"


def sweep_stale_temporaries(folder):
    """Removes cache files left half-written by a killed writer.

    A writer holds an exclusive `flock` on its temporary file until it has
    renamed it, so a temporary that can be locked has no live writer.

    Returns:
        The number of files removed.
    """
    removed = 0
    for path in Path(folder).glob(f"{_TEMP_PREFIX}*.npz"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            removed += 1
        except OSError:
            pass  # Locked: a live writer is still at work.
        finally:
            os.close(fd)
    return removed


def _save_npz_atomically(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".npz")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # Ours until renamed (see the sweep).
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_archive_cached(archive, cache_dir):
    digest = _file_digest(archive)
    cache_file = Path(cache_dir) / f"cifar10-{digest[:16]}.npz"
    if cache_file.parent.is_dir():
        sweep_stale_temporaries(cache_file.parent)
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as npz:
                return (npz["x_train"], npz["y_train"]), (npz["x_test"], npz["y_test"])
        except Exception:
            cache_file.unlink(missing_ok=True)  # A damaged cache is rebuilt.
    (x_train, y_train), (x_test, y_test) = _read_archive(archive)
    try:
        _save_npz_atomically(
            cache_file, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
        )
    except OSError:
        pass  # A read-only or full cache only costs speed next time.
    return (x_train, y_train), (x_test, y_test)


def _keras_cache_candidates():
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    datasets = keras_home / "datasets"
    return [
        datasets / "cifar-10-batches-py-target" / _BATCH_DIR,
        datasets / _BATCH_DIR,
        datasets / "cifar-10-python.tar.gz",
    ]


def resolve_source(source=None):
    """Finds where CIFAR-10 comes from, without loading it.

    Args:
        source: a path to `cifar-10-python.tar.gz` or `cifar-10-batches-py/`,
            or `None` to look in `$KD_KERAS_CIFAR10`, then the Keras cache.

    Returns:
        A `Path`, or `None` when only a download can provide the data.

    Raises:
        DatasetError: if an explicitly given path (argument or environment
            variable) does not exist, or is neither a regular file nor a
            folder (a FIFO, socket or device, which could block a read
            forever).
    """
    if source is None and os.environ.get(DATA_ENV_VAR, "").strip():
        source = os.environ[DATA_ENV_VAR].strip()
    if source is not None:
        path = Path(source).expanduser()
        if not path.exists():
            raise DatasetError(path, "no such file or folder")
        if not (path.is_file() or path.is_dir()):
            raise DatasetError(
                path, "not a regular file or folder (a FIFO, socket or device): refusing to read it"
            )
        return path
    for candidate in _keras_cache_candidates():
        if candidate.exists():
            return candidate
    return None


def load_cifar10(source=None, *, cache_dir=None):
    """Loads CIFAR-10 as `keras.datasets.cifar10.load_data()` does, offline.

    Args:
        source: path to the official `cifar-10-python.tar.gz` or to an
            extracted `cifar-10-batches-py/` folder. If `None`: the path in
            the environment variable `KD_KERAS_CIFAR10`, then the Keras cache
            (`~/.keras/datasets`), then `keras.datasets.cifar10.load_data()`
            (a download).
        cache_dir: where the decoded archive is cached (default
            `default_cache_dir()`). The source itself is only read.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: uint8 images of shape
        `(N, 32, 32, 3)` and int64 labels of shape `(N,)`.

    Raises:
        DatasetError: the source is missing, not an archive, truncated,
            corrupt, holds members that escape its folder or links, or holds
            batches of the wrong shape or label range.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_cifar10(
    ...     "cifar-10-python.tar.gz")
    >>> x_train.shape
    (50000, 32, 32, 3)
    """
    path = resolve_source(source)
    if path is None:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
        return (x_train, y_train.reshape(-1).astype(np.int64)), (
            x_test,
            y_test.reshape(-1).astype(np.int64),
        )
    if path.is_dir():
        return _load_from_folder(path)
    return _load_archive_cached(path, cache_dir or default_cache_dir())
