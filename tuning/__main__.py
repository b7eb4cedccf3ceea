"""`python -m tuning` and the `kd-keras-tune` script.

Importing the package (`tuning/__init__.py`) has already checked the
`tuning` extra (one line naming it, exit 2) and quieted TensorFlow's
start-up unless `--verbose` was given (`kd_keras/quiet.py`).
"""

import sys


def main(argv=None, prog=None):
    """Runs the search CLI; returns its exit code (`prog`: its name in the
    usage line, e.g. "kd-keras tune")."""
    from .cli import main as run

    argv = sys.argv[1:] if argv is None else list(argv)
    # --verbose only brings back TensorFlow's start-up lines (read above).
    return run([arg for arg in argv if arg != "--verbose"], prog)


if __name__ == "__main__":
    sys.exit(main())
