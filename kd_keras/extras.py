"""Optional extras: which `pip install "kd-keras[...]"` a front end needs.

`pip install .` installs the `kd-keras-tune` script even without the
`tuning` extra; `require_extra("tuning")` turns the missing module into one
line that names the extra to install (exit code 2 when run as a program, an
`ImportError` with that message when imported). Keras-free, and it imports
none of the extra's modules (`keras_tuner` imports Keras): it only looks
them up.
"""

import importlib.util
import sys
from pathlib import Path

# Extra -> the modules it installs (import names).
EXTRAS = {
    "tuning": ("keras_tuner", "sklearn"),
    "app": ("streamlit",),
}
# The T/alpha search's package: inside kd_keras once installed (pyproject.toml
# maps tuning/ there), top-level `tuning` in a checkout.
SEARCH_PACKAGES = ("kd_keras.tuning", "tuning")
# Console scripts (pyproject.toml) whose start counts as running a program.
SCRIPTS = ("kd-keras", "kd-keras-tune")


def _installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # A parent missing, or a None shim.
        return False


def search_package():
    """The importable name of the T/alpha search's package, or `None`. A
    folder without `__init__.py` (a runs root's `tuning/` searches folder
    in the current directory) does not count."""
    for name in SEARCH_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin is not None:
            return name
    return None


def missing_extra(extra, what="this"):
    """The one-line message for `extra`'s first missing module, or `None`
    when all of them are installed; `what` names what needs it."""
    for module in EXTRAS[extra]:
        if not _installed(module):
            return (
                f"{what} needs the '{extra}' extra ({module} is not installed); "
                f'install it with: pip install "kd-keras[{extra}]"'
            )
    return None


def running_as_program(argv=None):
    """True while `python -m <package>` looks up its `__main__` (argv[0] is
    "-m" then) or a kd-keras console script starts."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return False
    return argv[0] == "-m" or Path(argv[0]).name in SCRIPTS


def require_extra(extra, prog, what="this"):
    """Returns if `extra` is installed; otherwise prints `<prog>: error:
    ...` and exits with code 2 when running as a program, or raises
    `ModuleNotFoundError` with the same message when imported."""
    message = missing_extra(extra, what)
    if message is None:
        return
    if running_as_program():
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    raise ModuleNotFoundError(message, name=EXTRAS[extra][0])
