"""Every exception kd-keras raises, and the one table of CLI exit codes.

Keras-free: front ends (the CLIs, the app) import it without starting
TensorFlow. Each message is one line that names the problem and the fix.

Exit codes (`exit_code`), shared by `python -m kd_keras` and `python -m tuning`:

| code | meaning | raised as |
|---|---|---|
| 0 | done | |
| 1 | the run failed on the way | `NonFiniteLossError`, `DiskWriteError`, `CacheMismatchError`, `SearchFailedError`, out of memory |
| 2 | bad input: nothing was trained | `ConfigError` (and `DistributeError`), `DatasetError` (and `DataSourceError`), `ModelSpecError`, `RunFolderError`, `TeacherError`, `RunLockedError`, `DamagedFileError`, `ExportError`, `SearchError`, `LaunchError` |
| 130 | stopped (Ctrl-C, SIGTERM); `--resume` continues | `RunStopped`, `KeyboardInterrupt` |
"""

import sys

from kd_keras.layout import damaged_file_fix

# --- Bad input (exit code 2) --------------------------------------------------


class ConfigError(ValueError):
    """Raised for a run configuration that cannot be run."""


class DistributeError(ConfigError):
    """A strategy that cannot run as asked (bad TF_CONFIG, devices, batch)."""


HOW_TO_PROVIDE_CIFAR10 = (
    "Provide CIFAR-10 in one of three ways: pass the path of the official "
    "'cifar-10-python.tar.gz' (or its extracted 'cifar-10-batches-py/' "
    "folder) as `source` / --data; set the environment variable "
    "KD_KERAS_CIFAR10 to that path; or let Keras download it into "
    "~/.keras/datasets (needs internet access)."
)


class DatasetError(ValueError):
    """Raised when CIFAR-10 data is missing, truncated, corrupt or malformed.

    The message names the path, what is wrong with it, and the ways to
    provide the data.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"CIFAR-10 at '{path}': {problem}. {HOW_TO_PROVIDE_CIFAR10}")


class DataSourceError(DatasetError):
    """Raised for an image folder or `.npz` file that cannot be used; the
    message names the path, what is wrong and the fix, on one line."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        ValueError.__init__(self, f"data at '{path}': {problem}")


class ModelSpecError(ValueError):
    """A model name or file that cannot give the run's teacher or student."""


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (exists, differs, not writable)."""


class TeacherError(ValueError):
    """A teacher file that cannot be used: not a model, wrong classes, unsafe."""


class RunLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


class DamagedFileError(ValueError):
    """A file that exists but cannot be parsed (truncated, emptied, edited).

    The message names the file, what is wrong with it and how to fix it.

    Args:
        path: the damaged file.
        problem: what is wrong, e.g. the parser's complaint.
        fix: what to do; defaults to the fix for that file of a run or
            search folder (see `kd_keras.layout.damaged_file_fix`).
    """

    def __init__(self, path, problem, fix=None):
        self.path = str(path)
        self.problem = problem
        self.fix = fix or damaged_file_fix(path)
        super().__init__(f"'{path}' is damaged ({problem}); {self.fix}")


class ExportError(ValueError):
    """An export that cannot be done as asked: an unknown option, a stage
    that is missing or unfinished, a file that exists, a model the converter
    cannot handle. The message names the problem and what to do instead."""


class SearchError(ValueError):
    """A search that cannot run as asked: bad settings, a folder that is not
    a search, or a resume whose settings differ from the saved ones."""


class LaunchError(ValueError):
    """A launch or stop from the app that cannot be done; the message says
    what to do."""


# --- Failures on the way (exit code 1) ----------------------------------------


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class DiskWriteError(OSError):
    """A write failed (disk full, folder not writable); names the path."""


class CacheMismatchError(RuntimeError):
    """The batches replayed are not the batches whose logits were cached."""


class SearchFailedError(RuntimeError):
    """A search whose trials failed (e.g. a diverging loss): no trial
    completed, or too many failed in a row; names the last trial's error."""


# --- Stopped (exit code 130) ---------------------------------------------------


class RunStopped(BaseException):
    """The run was asked to stop (SIGTERM). A `BaseException`, like
    `KeyboardInterrupt`, so no `except Exception` on the way swallows it."""


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 130

BAD_INPUT = (
    ConfigError,
    DatasetError,
    ModelSpecError,
    RunFolderError,
    TeacherError,
    RunLockedError,
    DamagedFileError,
    ExportError,
    SearchError,
    LaunchError,
)
FAILED = (
    NonFiniteLossError,
    DiskWriteError,
    CacheMismatchError,
    SearchFailedError,
    MemoryError,
)
STOPPED = (RunStopped, KeyboardInterrupt)

OUT_OF_MEMORY = (
    "out of memory{where}; use smaller models or batches "
    "(--batch-size, --teacher-width) or free memory"
)


def is_tensorflow_out_of_memory(error):
    """True for TensorFlow's `ResourceExhaustedError` (checked by name, so
    this module does not import TensorFlow)."""
    return type(error).__name__ == "ResourceExhaustedError" and not is_disk_full(error)


def is_disk_full(error):
    """True for an error caused by a full disk, however a library wraps it
    (TensorFlow reports ENOSPC as a `ResourceExhaustedError`, HDF5 in its
    message)."""
    if getattr(error, "errno", None) == 28:  # ENOSPC
        return True
    text = str(error)
    return "No space left on device" in text or "errno = 28," in text


DISK_FULL = "the disk is full{where}; free some space and run the same command again"


def exit_code(error):
    """The CLI exit code for `error`, or `None` for an unexpected error (a
    bug: the CLI lets its traceback through)."""
    if isinstance(error, STOPPED):
        return EXIT_STOPPED
    if isinstance(error, BAD_INPUT):
        return EXIT_BAD_INPUT
    if isinstance(error, FAILED) or is_tensorflow_out_of_memory(error) or is_disk_full(error):
        return EXIT_FAILED
    return None


# The longest line a CLI prints for an error: a message listing many values
# (a thousand class names) keeps its start and its end, where the fix is.
MAX_MESSAGE_CHARS = 600  # Room for a fix naming two paths and a command.


def shorten(text, limit=MAX_MESSAGE_CHARS):
    """`text` cut in the middle to at most `limit` characters, saying how
    many were left out."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    marker = f" [... {len(text):,} characters left out ...] "  # At least as long as needed.
    head = limit - tail - len(marker)
    marker = f" [... {len(text) - head - tail:,} characters left out ...] "
    return text[:head] + marker + text[-tail:]


def one_line(error):
    """The message of `error` on one line of at most `MAX_MESSAGE_CHARS`
    characters: a multi-line one (keras-tuner's traceback of the last failed
    trial) gives its first and last lines; an empty one gives the class
    name."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) == 1:
        return shorten(lines[0])
    return shorten(f"{lines[0]} (last: {lines[-1].strip()})")


def describe(error):
    """The one line a CLI prints for `error` after "<prog>: error: "."""
    if isinstance(error, DiskWriteError) and error.strerror:
        return one_line(error.strerror)  # Without OSError's "[Errno 28]".
    if is_disk_full(error):
        return DISK_FULL.format(where="")
    if isinstance(error, MemoryError):
        return OUT_OF_MEMORY.format(where="")
    if is_tensorflow_out_of_memory(error):
        return OUT_OF_MEMORY.format(where=" in TensorFlow")
    return one_line(error)


def run_command(prog, command, *, failures=(), failure_prefix="", stop_hint=""):
    """Runs `command()` for a CLI and maps what it raises to an exit code.

    Known errors print one line to stderr (`<prog>: error: ...` or
    `<prog>: stopped: ...`) and return their code; unexpected ones propagate
    with their traceback.

    Args:
        prog: the CLI's name, the prefix of every line printed.
        command: a function of no arguments returning the exit code.
        failures: further exception classes that mean "the run failed"
            (code 1), printed after `failure_prefix`.
        stop_hint: appended to the "stopped" line, e.g. how to resume.
    """
    try:
        return command()
    except BaseException as error:
        code = exit_code(error)
        if code is None and isinstance(error, failures):
            print(f"{prog}: error: {failure_prefix}{one_line(error)}", file=sys.stderr)
            return EXIT_FAILED
        if code is None:
            raise
        if code == EXIT_STOPPED:
            print(
                f"{prog}: stopped: {one_line(error) if str(error) else 'interrupted'}{stop_hint}",
                file=sys.stderr,
            )
        else:
            print(f"{prog}: error: {describe(error)}", file=sys.stderr)
        return code
