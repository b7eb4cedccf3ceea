"""Atomic file writes, damaged-file errors and the folder lock.

Every file in a run folder is written under a temporary name in the same
folder and renamed over its final name, so a reader (the app, another
process) never sees a half-written file and a crash never leaves one.

A folder is owned by one process at a time through `RunLock`: an exclusive
`fcntl.flock` on a lock file, held for the owner's life and released by the
kernel when it exits (SIGKILL included). Whether a folder is locked is
decided by the kernel's lock alone, never by the pid written in the file, so
a lock can neither outlive its owner nor be claimed by a stranger that reused
its pid.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from kd_keras.errors import (
    DamagedFileError,
    DiskWriteError,
    RunFolderError,
    RunLockedError,
    is_disk_full,
)

_UMASK = None


def process_umask():
    """The process's umask, read once: from `/proc/self/status` (which
    leaves it unchanged, safe with threads), else by setting and restoring
    it (only before threads start: kd_keras reads it on its first write)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status") as file:
                line = next(line for line in file if line.startswith("Umask:"))
            _UMASK = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def file_mode():
    """The mode `open()` gives a new file: 0o666 less the umask."""
    return 0o666 & ~process_umask()


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yields a temporary path beside `path`; renames it over `path` on success.

    The file gets the mode `open()` would give it (0o666 less the umask),
    and a symbolic link at `path` is replaced, never written through.

    Args:
        path: the final file path.
        suffix: the temporary file's suffix; defaults to `path`'s own suffixes
            (Keras picks the format from it, e.g. `.keras`, `.weights.h5`).

    Raises:
        DiskWriteError: if writing or renaming fails, e.g. a full disk. The
            final path is then left as it was, and no temporary file remains.
    """
    path = Path(path)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{suffix}")
        os.close(fd)
    except OSError as error:
        raise write_error(path, error) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
            # mkstemp made it 0600; the final file has open()'s mode.
            os.fchmod(file.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, DiskWriteError) or not (
            isinstance(error, OSError) or (isinstance(error, Exception) and is_disk_full(error))
        ):
            raise
        raise write_error(path, error) from error


def write_error(path, error):
    """A one-line `DiskWriteError` for a failed write of `path`."""
    if is_disk_full(error):
        # The library's own text (HDF5's spans lines) says no more.
        detail, code = "the disk is full: free some space", errno.ENOSPC
    elif getattr(error, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM):
        detail, code = f"the folder is read-only ({error.strerror})", error.errno
    else:
        text = getattr(error, "strerror", None) or str(error) or type(error).__name__
        detail, code = " ".join(str(text).split())[:200], getattr(error, "errno", None)
    return DiskWriteError(code, f"could not write '{path}': {detail}")


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, value):
    """Writes `value` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path, default=None, *, fix=None):
    """Reads JSON from `path`, or returns `default` if it does not exist.

    Raises:
        DamagedFileError: the file exists but is not valid JSON (truncated,
            empty, not UTF-8), naming the file and the fix.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        return default
    except IsADirectoryError:
        raise DamagedFileError(path, "a folder where a file belongs", fix) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        problem = "empty" if not raw.strip() else f"not valid JSON: {error}"
        raise DamagedFileError(path, problem, fix) from None


def read_json_object(path, default=None, *, keys=(), fix=None):
    """Like `read_json`, but the content must be a dict holding `keys`."""
    value = read_json(path, default, fix=fix)
    if value is default:
        return value
    if not isinstance(value, dict):
        raise DamagedFileError(path, f"a JSON {type(value).__name__}, not an object", fix)
    missing = [k for k in keys if k not in value]
    if missing:
        raise DamagedFileError(path, f"no {', '.join(map(repr, missing))} entry", fix)
    return value


def pid_alive(pid):
    """True if a process with this pid exists (and is not a zombie).

    Says nothing about *which* process it is: pids are reused. Folder
    ownership is decided by `RunLock`/`lock_holder`, not by this.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
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


LOCK_FILE = "run.lock"
# A reader (`lock_holder`, e.g. the app polling) holds a shared lock for a
# few microseconds; `acquire` retries for this long before calling the
# folder taken, so a poll never makes a start fail.
_ACQUIRE_GRACE_S = 0.2


def _command_line():
    try:
        with open("/proc/self/cmdline", "rb") as file:
            parts = [p.decode(errors="replace") for p in file.read().split(b"\0") if p]
    except OSError:
        parts = [sys.executable, *sys.argv]
    return " ".join(parts)


def _same_file(fd, path):
    try:
        now = os.stat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _parse_lock_record(raw):
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, int) and not isinstance(record, bool):
        record = {"pid": record}  # An older kd_keras wrote the bare pid.
    if not isinstance(record, dict):
        return {"pid": None}
    if not isinstance(record.get("pid"), int) or isinstance(record.get("pid"), bool):
        record["pid"] = None
    return record


def sibling_lock_path(folder):
    """The lock file beside `folder`, `.<name>.lock`, for folders that are
    deleted whole (a Keras Tuner search folder on `--overwrite`), where a
    lock file inside would go with them."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def lock_holder(folder=None, *, path=None):
    """Who holds a folder's lock right now, or `None` if nobody does.

    Decided by the kernel: the lock file's `flock` is tested with a shared,
    non-blocking lock that is dropped at once. A lock file left by a process
    that died (however it died) is not held, whatever pid it names.

    Args:
        folder: the locked folder (its lock file is `<folder>/run.lock`).
        path: the lock file itself, instead of `folder`.

    Returns:
        `None`, or the holder's record: a dict with `pid` (an int, or None
        if the holder has not written it yet) and, when written by this
        version, `command`, `folder`, `started_at`, `host` and `token`.
    """
    path = Path(path) if path is not None else Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None  # No lock file (or an unreadable one or a link: nobody can hold it).
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse_lock_record(os.pread(fd, 65536, 0))
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on a folder, held until `release()` or the process ends.

    `acquire()` takes an exclusive `fcntl.flock` on the lock file (created if
    needed) and then writes who holds it (pid, command line, folder, start
    time, host, a random token) into the file, for people and for the app's
    "who is running this" display. The kernel drops the lock when the
    process exits, however it exits, so there is never a stale lock to clear:
    a lock file whose holder is gone is simply taken by the next `acquire()`,
    even if its pid now belongs to another live process. Two processes that
    call `acquire()` at the same instant cannot both succeed.

    Args:
        folder: the folder to lock; created if missing.
        path: the lock file; defaults to `<folder>/run.lock`. (A search
            folder uses a file beside it, because Keras Tuner deletes the
            folder itself on `--overwrite`.)

    Raises:
        RunLockedError: from `acquire()`, when another process (or another
            `RunLock` of this process) holds the lock; the message names the
            holder's pid and command.

    Example:

    >>> with RunLock("runs/quick"):
    ...     ...  # Only this process writes runs/quick.
    """

    def __init__(self, folder, *, path=None):
        self.folder = Path(folder)
        self.path = Path(path) if path is not None else self.folder / LOCK_FILE
        self._fd = None
        self._pid = None

    def acquire(self):
        """Takes the lock or raises `RunLockedError`; returns self."""
        if self._fd is not None and self._pid == os.getpid():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _ACQUIRE_GRACE_S
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise self._locked_error() from None
            except BaseException:
                os.close(fd)
                raise
            if not _same_file(fd, self.path):
                # The previous holder removed the file between our open and
                # our lock: this inode is no longer the lock. Start over.
                os.close(fd)
                continue
            try:
                self._write_record(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._pid = fd, os.getpid()
            return self

    def _open(self):
        """Opens (creating) the lock file, never through a symbolic link nor
        into a file with another name (a hard link): writing the record
        there would overwrite someone's file."""
        try:
            fd = os.open(
                self.path,
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                0o666,
            )
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise self._foreign_error("a symbolic link") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link"
            raise self._foreign_error(what)
        return fd

    def _foreign_error(self, what):
        return RunFolderError(
            f"the lock file '{self.path}' is {what}, which kd_keras never writes "
            f"through; remove it (rm '{self.path}') and run again"
        )

    def _write_record(self, fd):
        record = {
            "pid": os.getpid(),
            "command": _command_line(),
            "folder": str(self.folder.resolve()),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "token": uuid.uuid4().hex,
        }
        data = (json.dumps(record, indent=2) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def _locked_error(self):
        holder = lock_holder(path=self.path) or {}
        pid = holder.get("pid")
        if pid == os.getpid():
            who = "this process (another RunLock on the same folder)"
        elif pid is not None:
            command = holder.get("command")
            since = holder.get("started_at")
            who = f"process {pid}" + (
                f" ({command}" + (f", since {since}" if since else "") + ")" if command else ""
            )
        else:
            who = "another process"
        stop = f" (kill -TERM {pid})" if pid is not None and pid != os.getpid() else ""
        return RunLockedError(
            f"'{self.folder}' is in use by {who}; wait for it to finish or stop it "
            f"first{stop}: the lock ends with its process, there is nothing to delete"
        )

    @property
    def held(self):
        """True while this object holds the lock."""
        return self._fd is not None and self._pid == os.getpid()

    def owner(self):
        """The pid of the process holding the lock now, or `None`."""
        holder = lock_holder(path=self.path)
        return None if holder is None else holder.get("pid")

    def release(self):
        """Drops the lock and removes the lock file (no-op if not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._pid == os.getpid() and _same_file(fd, self.path):
                # Removed while still locked: a process waiting on this inode
                # sees it is gone (`_same_file`) and locks a new file.
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
