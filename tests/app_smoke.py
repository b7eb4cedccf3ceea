"""Helpers shared by the app tests (not a test module).

The real smoke-preset run folder they read is conftest's `smoke_run`.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # For `import kd_app` under a bare `pytest`.


def subprocess_env(tmp_root):
    """The environment of training subprocesses: the dataset cache in the
    test session's temporary folder (never ~/.cache) unless one is set."""
    env = dict(os.environ)
    env.setdefault("KD_KERAS_CACHE", str(Path(tmp_root) / "kd_cache_app"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env
