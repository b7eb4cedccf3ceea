"""Exceptions and CLI exit codes (kd_keras/errors.py)."""

import pytest

from kd_keras import errors
from kd_keras.errors import (
    ConfigError,
    DataSourceError,
    DiskWriteError,
    DistributeError,
    NonFiniteLossError,
    RunLockedError,
    RunStopped,
    SearchError,
    exit_code,
    run_command,
)


class ResourceExhaustedError(Exception):
    """Named like TensorFlow's out-of-memory error."""


@pytest.mark.parametrize(
    "error, code",
    [
        (ConfigError("x"), 2),
        (DistributeError("x"), 2),
        (DataSourceError("d", "x"), 2),
        (SearchError("x"), 2),
        (RunLockedError("x"), 2),  # A RuntimeError, but bad input: checked first.
        (NonFiniteLossError("x"), 1),
        (DiskWriteError(28, "x"), 1),
        (MemoryError(), 1),
        (ResourceExhaustedError("oom"), 1),
        (RunStopped("SIGTERM"), 130),
        (KeyboardInterrupt(), 130),
        (ZeroDivisionError(), None),
    ],
)
def test_exit_codes(error, code):
    assert exit_code(error) == code


def _raise(error):
    def command():
        raise error

    return command


def test_run_command_prints_one_line_and_returns_the_code(capsys):
    assert run_command("kd_keras", lambda: 0) == 0
    assert run_command("kd_keras", _raise(ConfigError("bad seed -1"))) == 2
    assert capsys.readouterr().err == "kd_keras: error: bad seed -1\n"
    assert (
        run_command(
            "tuning",
            _raise(RuntimeError("trial failed\nTraceback\nValueError: x")),
            failures=(RuntimeError,),
            failure_prefix="the search failed: ",
        )
        == 1
    )
    assert capsys.readouterr().err == (
        "tuning: error: the search failed: trial failed (last: ValueError: x)\n"
    )
    assert (
        run_command(
            "tuning", _raise(KeyboardInterrupt()), stop_hint=" (run the same command to resume)"
        )
        == 130
    )
    assert capsys.readouterr().err == (
        "tuning: stopped: interrupted (run the same command to resume)\n"
    )
    assert run_command("kd_keras", _raise(ResourceExhaustedError("OOM when allocating"))) == 1
    assert "out of memory in TensorFlow" in capsys.readouterr().err


def test_unexpected_errors_keep_their_traceback():
    with pytest.raises(ZeroDivisionError):
        run_command("kd_keras", _raise(ZeroDivisionError()))


def test_every_exception_lives_in_errors():
    import ast
    from pathlib import Path

    root = Path(errors.__file__).parents[1]
    defined = []
    for path in [
        *root.glob("kd_keras/**/*.py"),
        *root.glob("tuning/*.py"),
        *root.glob("kd_app/*.py"),
        root / "app.py",
    ]:
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(base, "id", getattr(base, "attr", "")).endswith(("Error", "Exception"))
                or getattr(base, "id", "") == "BaseException"
                for base in node.bases
            ):
                defined.append(f"{path.relative_to(root)}:{node.name}")
    assert defined == []
