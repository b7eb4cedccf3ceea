"""Where the page may reach: every path it names resolves inside a root.

The app serves a page that anyone who can reach its port can use, so the
folders it reads and writes are fixed by whoever starts it (the operator),
never by the page:

- the runs root: `streamlit run app.py -- --runs DIR`, else
  `$KD_KERAS_RUNS_DIR`, else `runs` (resolved once, at start);
- the data roots: `--data-root DIR` / `$KD_KERAS_DATA_DIR` (optional), the
  runs root, and the CIFAR-10 archive named by `$KD_KERAS_CIFAR10` (that
  one path, not its folder).

A name or path from the page is accepted only if it resolves (symlinks
followed) inside one of those; `..` and absolute paths in files a run
wrote (export rows) are refused outright. A refused path gets the same
message whether or not it exists, so the page is no oracle for the
server's files. Keras-free.
"""

import argparse
import errno
import os
import stat
import sys
from pathlib import Path, PurePosixPath

from kd_keras.data.cifar10 import DATA_ENV_VAR
from kd_keras.errors import LaunchError

RUNS_ENV_VAR = "KD_KERAS_RUNS_DIR"
DATA_ROOT_ENV_VAR = "KD_KERAS_DATA_DIR"
CIFAR_ENV_VAR = DATA_ENV_VAR
DEFAULT_RUNS_DIR = "runs"


def _script_args(argv=None):
    """`--runs DIR` and `--data-root DIR` of `streamlit run app.py -- ...`."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--runs")
    parser.add_argument("--data-root")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known


def runs_root(argv=None):
    """The runs root, absolute: `--runs`, `$KD_KERAS_RUNS_DIR`, or `runs`."""
    chosen = _script_args(argv).runs or os.environ.get(RUNS_ENV_VAR) or DEFAULT_RUNS_DIR
    return Path(chosen).expanduser().resolve()


def cifar_default():
    """`$KD_KERAS_CIFAR10` resolved, or None."""
    value = os.environ.get(CIFAR_ENV_VAR, "").strip()
    return Path(value).expanduser().resolve() if value else None


def data_roots(runs, argv=None):
    """The folders data sources may come from: `--data-root` /
    `$KD_KERAS_DATA_DIR` (if set) and the runs root."""
    chosen = _script_args(argv).data_root or os.environ.get(DATA_ROOT_ENV_VAR, "").strip()
    roots = [Path(chosen).expanduser().resolve()] if chosen else []
    return roots + [Path(runs).resolve()]


def is_inside(path, root):
    """True if `path` (symlinks followed) is `root` or inside it."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError, ValueError):  # A symlink loop, a NUL byte.
        return False


SHOWN_CHARACTERS = 120


def shown(text, limit=SHOWN_CHARACTERS):
    """`text` for a one-line message: at most `limit` characters, its middle
    replaced by `...` when longer (a page may send a path of any length)."""
    text = str(text)
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


def relative_name(text):
    """`text` as a relative path with no `..`, `.` or empty parts, or None."""
    text = str(text or "")
    if not text or "\0" in text or "\\" in text:
        return None
    path = PurePosixPath(text)
    if path.is_absolute() or any(part in ("", ".", "..") for part in text.split("/")):
        return None
    return path


def within(root, name, what="path"):
    """`root / name`, resolved, if it stays inside `root`.

    Args:
        root: an (operator-given) folder.
        name: a relative name from the page or from a file a run wrote
            (`a`, `a/b.keras`); absolute paths and `..` are refused.
        what: what `name` is, for the message.

    Raises:
        LaunchError: `name` is absolute, has `..`, leaves `root` through
            a symlink, or cannot be looked up (too long, a loop).
    """
    relative = relative_name(name)
    if relative is None:
        raise LaunchError(
            f"The {what} '{shown(name)}' must be a name inside '{root}' (no '..', not absolute)."
        )
    path = Path(root) / relative
    if not is_inside(path, root):
        raise LaunchError(
            f"The {what} '{shown(name)}' leads out of '{root}' (a symlink); "
            "only files inside it can be used."
        )
    _refuse_unusable(path, name, what, "Choose another name.")
    return path


def own_file(folder, path):
    """True if `path` resolves inside `folder`: what a run folder holds is
    read or offered only then (a symlink to elsewhere is not)."""
    return is_inside(path, folder)


def confined_path(text, roots, what, hint):
    """A path typed on the page, resolved, if inside one of `roots` (folders,
    or single files: a root that is a file admits only itself).

    A relative `text` is taken relative to the first root. The message is
    the same whether or not the path exists. A path the system cannot look
    up (too long, a symlink loop, ...) is refused in one line too, its text
    shortened.

    Raises:
        LaunchError: outside every root, or not usable as a path.
    """
    text = str(text or "").strip()
    roots = [Path(r) for r in roots if r]
    if not text or "\0" in text or not roots:
        raise LaunchError(f"No {what} given. {hint}")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = roots[0] / path
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):
        resolved = None
    for root in roots:
        if resolved is not None and (resolved == root.resolve() or is_inside(resolved, root)):
            if not (root.resolve().is_file() and resolved != root.resolve()):
                _refuse_unusable(resolved, text, what, hint)
                return resolved
    names = ", ".join(f"'{r}'" for r in roots)
    raise LaunchError(
        f"The {what} '{shown(text)}' is not inside {names}: this app reads only there. {hint}"
    )


def _refuse_unusable(resolved, text, what, hint):
    """Raises `LaunchError` if the system cannot look `resolved` up for a
    reason other than its absence (a name too long, a loop, no permission):
    asked only of paths inside a root, so it tells nothing of other files."""
    try:
        os.stat(resolved)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise LaunchError(f"The {what} '{shown(text)}' cannot be used: {reason}. {hint}") from None


def open_log(path):
    """A log file opened for writing without following a symlink.

    A new log is created with `O_CREAT | O_EXCL | O_NOFOLLOW`; an existing
    regular one (a resumed run, or a launch again under the same name) is
    appended to, opened with `O_NOFOLLOW`. A symlink, a hard link (a file
    with more than one name: it may be one outside the folder) or anything
    but a regular file at `path` is refused.

    Returns:
        A binary file object. Raises `LaunchError`.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            if not path.is_symlink() and path.is_file():
                fd = os.open(path, flags | os.O_APPEND)
                _refuse_shared(fd)
            else:
                raise OSError(errno.ELOOP, "a symlink or not a regular file") from None
    except OSError as error:
        raise LaunchError(
            f"Cannot write the log '{path}': {error.strerror or error}; remove it "
            "(the app writes its logs only as new regular files in the runs folder)."
        ) from None
    return os.fdopen(fd, "ab")


def _refuse_shared(fd):
    """Closes `fd` and raises `OSError` unless it is a regular file with one
    name (`st_nlink == 1`): a hard link may be a file outside the folder."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
        return
    os.close(fd)
    raise OSError(errno.EMLINK, "a hard link (a file with more than one name)")


def read_own_file(path):
    """The bytes of the regular file `path`, opened without following a
    symlink and refused if it has more than one name (a hard link may be a
    file outside the run folder).

    Raises:
        LaunchError: a symlink, a hard link, not a regular file, unreadable.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
        _refuse_shared(fd)
    except OSError as error:
        raise LaunchError(
            f"'{shown(path)}' is not offered: {error.strerror or error} "
            "(only regular files the run wrote, with no other name, are)."
        ) from None
    with os.fdopen(fd, "rb") as file:
        return file.read()
