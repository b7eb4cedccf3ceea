"""Atomic file writes and the run-folder lock.

Every file in a run folder is written under a temporary name in the same
folder and renamed over its final name, so a reader (the app, another
process) never sees a half-written file and a crash never leaves one.
"""

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path


class DiskWriteError(OSError):
    """A write failed (disk full, folder not writable); names the path."""


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path beside `path`; renames it over `path` on success.

    Args:
        path: the final file path.
        suffix: the temporary file's suffix; defaults to `path`'s own suffixes
            (Keras picks the format from it, e.g. `.keras`, `.weights.h5`).

    Raises:
        DiskWriteError: if writing or renaming fails, e.g. a full disk. The
            final path is then left as it was, and no temporary file remains.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        hint = " (the disk is full: free some space)" if error.errno == errno.ENOSPC else ""
        raise DiskWriteError(
            error.errno, f"could not write '{path}': {error.strerror or error}{hint}"
        ) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, value):
    """Writes `value` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path, default=None):
    """Reads JSON from `path`, or returns `default` if it does not exist."""
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError:
        return default


def pid_alive(pid):
    """True if a process with this pid exists (and is not a zombie)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class RunLockedError(RuntimeError):
    """Another live process holds the run folder."""


class RunLock:
    """A lock file holding the owner's pid; a stale lock (dead pid) is taken over.

    Example:

    >>> with RunLock("runs/quick"):
    ...     ...  # Only this process writes runs/quick.
    """

    def __init__(self, folder):
        self.path = Path(folder) / "run.lock"

    def acquire(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner()
                if owner is not None and owner != os.getpid() and pid_alive(owner):
                    raise RunLockedError(
                        f"run folder '{self.path.parent}' is in use by process "
                        f"{owner}; wait for it to finish or stop it first"
                    ) from None
                self.path.unlink(missing_ok=True)  # Stale: its owner is gone.
                continue
            with os.fdopen(fd, "w") as file:
                file.write(str(os.getpid()))
            return self
        raise RunLockedError(f"could not take the lock '{self.path}'")

    def owner(self):
        try:
            return int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return None

    def release(self):
        if self.owner() == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
