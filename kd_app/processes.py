"""The processes the app starts: spawning, reaping, pid checks, SIGTERM.

A run (`python -m kd_keras run ...`) or a search (`python -m kd_keras tune ...`)
is started in its own session, so it survives page reloads and even a
restart of the app, and is stopped with SIGTERM, which both turn into a
clean stop.

Each process started by the app leaves two files beside its folder:
`<folder>.log` (its stdout and stderr) and `<folder>.launch.json` (pid,
kind, command, start time). They sit beside the folder, not in it, because
kd_keras refuses to start in a non-empty folder and `--overwrite` empties it.
The log is created with `O_CREAT | O_EXCL | O_NOFOLLOW` (appended to, never
through a symlink, when it exists: `kd_app.confine.open_log`).

Starts under one runs root are serialised by `launch_lock` (an `flock` on
`<root>/.kd_app.lock`), so the "one at a time" check and the start that
follows it are one step for every page served from that root.

Which process owns a folder is decided by the folder's lock
(`kd_keras.atomic.lock_holder`), as kd_keras decides it; a pid read from a
file counts only while that pid still runs the right module on that folder
(`runs_module_on`), since pids are reused.
"""

import contextlib
import fcntl
import os
import signal
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import LaunchError

from .confine import is_inside, open_log
from .files import read_or
from .settings import CODE_ROOT

LIVE_STATUSES = ("starting", "running")
LAUNCH_LOCK = ".kd_app.lock"  # In the runs root; hidden, so never listed as a run.

_CHILDREN = {}  # pid -> Popen of processes this app process started.
_EXIT_CODES = {}  # pid -> return code of reaped children.


def reap():
    """Collects exited children (no zombies); remembers their exit codes."""
    for pid, process in list(_CHILDREN.items()):
        code = process.poll()
        if code is not None:
            _EXIT_CODES[pid] = code
            del _CHILDREN[pid]


def exit_code(pid):
    """The exit code of a child this app started and that has ended."""
    reap()
    return _EXIT_CODES.get(pid)


def pid_alive(pid):
    """True if a process with this pid exists and is not a zombie."""
    reap()
    return atomic.pid_alive(pid)


def process_args(pid):
    """A process's command line as a list, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def runs_module(pid, module):
    """True if `pid` is alive and is `python -m <module> ...`; `module` may
    name a subcommand too ("kd_keras tune")."""
    if not pid_alive(pid):
        return False
    args = process_args(pid)
    if args is None:  # No /proc (not Linux): trust the pid.
        return True
    words = module.split()
    return any(a == "-m" and args[i + 1 : i + 1 + len(words)] == words for i, a in enumerate(args))


def runs_module_on(pid, module, folder):
    """True if `pid` is alive, is `python -m <module> ...`, and its `--out`
    is `folder`: a reused pid, even of another kd_keras process, is not."""
    if not runs_module(pid, module):
        return False
    args = process_args(pid)
    if args is None:  # No /proc (not Linux): trust the pid.
        return True
    out = next((b for a, b in zip(args, args[1:]) if a == "--out"), None)
    if out is None:
        return False
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        cwd = Path.cwd()
    return (cwd / out).resolve() == Path(folder).resolve()


def launch_files(folder):
    """`(<folder>.log, <folder>.launch.json)`: beside the folder."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.log", folder.parent / f"{folder.name}.launch.json"


def read_launch(folder):
    """The launch record of `folder` (a dict), or None."""
    path = launch_files(folder)[1]
    if not is_inside(path, Path(folder).parent):  # A symlink out of the root.
        return None
    record = read_or(lambda: atomic.read_json(path))
    return record if isinstance(record, dict) else None


def launched_folders(parent, kind):
    """`{name: folder}` of the launch records of `kind` in `parent`: folders
    the app started a process for, whether or not the process made them."""
    found = {}
    for child in Path(parent).glob("*.launch.json"):
        name = child.name[: -len(".launch.json")]
        if (read_launch(child.parent / name) or {}).get("kind") == kind:
            found[name] = child.parent / name
    return found


def newest_first(folders, activity_file):
    """`folders` sorted by their latest sign of life: `activity_file(folder)`,
    the folder itself, or its launch record."""

    def newest(path):
        times = [0.0]
        for candidate in (activity_file(path), path, launch_files(path)[1]):
            try:
                times.append(candidate.stat().st_mtime)
            except OSError:
                pass
        return max(times)

    return sorted(folders, key=newest, reverse=True)


class ProcessState:
    """What run and search states share: a folder and a process status."""

    @property
    def name(self):
        return self.path.name

    @property
    def alive(self):
        return self.status in LIVE_STATUSES


@contextlib.contextmanager
def launch_lock(root):
    """Holds the runs root's launch lock (blocking) for a check-and-start.

    Raises:
        LaunchError: the lock file cannot be opened (e.g. it is a symlink).
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            root / LAUNCH_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666
        )
    except OSError as error:
        raise LaunchError(
            f"Cannot take the launch lock in '{root}': {error.strerror or error}; "
            f"remove '{root / LAUNCH_LOCK}' if it is a symlink."
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def spawn(argv, folder, *, kind):
    """Starts `argv` as a detached process logging to `<folder>.log`.

    The process gets its own session (`start_new_session=True`), so a page
    reload, a closed browser tab or a restart of the app leaves it running.

    Returns:
        The new process's pid.
    """
    argv = [str(a) for a in argv]
    log_path, record_path = launch_files(folder)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), env.get("PYTHONPATH", "")) if p)
    with open_log(log_path) as log:
        stamp = datetime.now().isoformat(timespec="seconds")
        log.write(f"[kd-app {stamp}] $ {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=CODE_ROOT,
            env=env,
            start_new_session=True,
        )
    _CHILDREN[process.pid] = process
    atomic.write_json(
        record_path,
        {
            "pid": process.pid,
            "kind": kind,
            "argv": argv,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "log": str(log_path),
        },
    )
    return process.pid


def start(argv, folder, *, kind, what):
    """`spawn`, with an `OSError` turned into a one-line `LaunchError`
    ("could not start the run: ...", `what` = "start the run")."""
    try:
        return spawn(argv, folder, kind=kind)
    except OSError as error:
        raise LaunchError(f"could not {what}: {error.strerror or error}") from None


def terminate(pid, module):
    """Sends SIGTERM to `pid` if it is `python -m <module>`; returns a message."""
    if not pid_alive(pid):
        raise LaunchError(f"process {pid} is not running any more")
    if not runs_module(pid, module):
        raise LaunchError(f"process {pid} is not a `python -m {module}` process; not stopping it")
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError as error:
        raise LaunchError(f"could not stop process {pid}: {error.strerror or error}") from None
    return f"Sent SIGTERM to process {pid}; it stops after the current batch."
