"""`kd-keras tune ...` and `kd-keras app ...`: the T/alpha search and the
Streamlit app, started from the package (installed or a checkout).

`pip install .` installs one top-level package, `kd_keras`: the search is
`kd_keras.tuning` and the app `kd_keras.app` there (pyproject.toml maps the
checkout's `tuning/` and `kd_app/` onto them). From a checkout the search
falls back to the top-level `tuning` and the app to `app.py`. Keras-free:
the search imports Keras only after its extra was found.
"""

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from kd_keras import extras
from kd_keras.quiet import start_tensorflow

PROG = "kd_keras"


def _refuse(message):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def tune(argv):
    """Runs the search CLI with `argv`; returns its exit code."""
    message = extras.missing_extra("tuning", "the T/alpha search")
    package = extras.search_package()
    if message is None and package is None:
        message = "the T/alpha search is not installed (no kd_keras.tuning); reinstall kd-keras"
    if message is not None:
        return _refuse(message)
    start_tensorflow(verbose="--verbose" in argv)  # Quietly, before the search imports Keras.
    return importlib.import_module(f"{package}.__main__").main(argv, prog="kd-keras tune")


def page_script():
    """The page script Streamlit runs: the installed package's
    `streamlit_script.py`, else a checkout's `app.py`; `None` if neither."""
    try:
        spec = importlib.util.find_spec("kd_keras.app")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent / "streamlit_script.py"
    checkout = Path(__file__).resolve().parents[1] / "app.py"
    return checkout if checkout.is_file() else None


def app_command(argv, script):
    """`python -m streamlit run <script> [options] --server.address localhost -- [app args]`:
    Streamlit's options before `--`, the app's (`--runs DIR`, `--data-root DIR`)
    after it. The page refuses to run without a server address
    (kd_app/tabs/common.py `listens_everywhere`), so localhost is added
    unless the options name one."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    options, app_args = argv[:split], argv[split + 1 :]
    if not any(o == "--server.address" or o.startswith("--server.address=") for o in options):
        options += ["--server.address", "localhost"]
    return [sys.executable, "-m", "streamlit", "run", str(script), *options, "--", *app_args]


def app(argv):
    """Replaces this process by the Streamlit server of the app; returns an
    exit code only when it cannot start."""
    message = extras.missing_extra("app", "the app")
    if message is not None:
        return _refuse(message)
    script = page_script()
    if script is None:
        return _refuse("the app's page is not installed (no kd_keras.app); reinstall kd-keras")
    command = app_command(argv, script)
    sys.stdout.flush()
    try:
        os.execv(command[0], command)
    except OSError as error:
        return _refuse(f"could not start Streamlit: {error.strerror or error}")


# Subcommands whose arguments belong to another program (the search, Streamlit).
COMMANDS = {"tune": tune, "app": app}


def add_commands(commands):
    """Lists `tune` and `app` in `kd-keras --help` (`commands`: the CLI's
    subparsers); `cli.main` hands their arguments on before parsing."""
    commands.add_parser("tune", help="the T/alpha search (`kd-keras tune --help`)")
    commands.add_parser(
        "app", help="the Streamlit app on localhost (`kd-keras app [-- --runs DIR]`)"
    )
