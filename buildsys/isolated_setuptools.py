"""PEP 517 build backend: setuptools, run on a copy of the source tree.

`pip install .` builds in the source folder, and setuptools writes `build/`
and `kd_keras.egg-info/` there. This backend copies what the build needs
(`pyproject.toml`, `README.md` and the packages) into a temporary folder
and runs setuptools' own hooks there, so the checkout stays as it was. The
wheel, the sdist and the metadata are the same; only where setuptools
scribbles changes. Editable installs (`pip install -e .`) point at the
checkout by design and run in place.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from setuptools import build_meta as _setuptools

# What a build reads; everything else (tests, results, runs) stays behind.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "kd_keras", "tuning", "kd_app")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")


@contextlib.contextmanager
def _copy_of_source():
    """A temporary copy of the source tree, made the current folder."""
    source = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="kd_keras_build_") as tmp:
        for name in SOURCES:
            path = source / name
            if path.is_dir():
                shutil.copytree(path, Path(tmp) / name, ignore=SKIP)
            elif path.is_file():
                shutil.copy2(path, Path(tmp) / name)
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(source)


def _in_copy(hook):
    """setuptools' `hook`, run in a copy of the source; an output folder
    given first (relative to the source) is made absolute before."""

    def run(*args, **kwargs):
        if args and isinstance(args[0], (str, os.PathLike)):
            args = (os.path.abspath(args[0]), *args[1:])
        with _copy_of_source():
            return hook(*args, **kwargs)

    run.__name__, run.__doc__ = hook.__name__, hook.__doc__
    return run


get_requires_for_build_wheel = _in_copy(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_sdist = _in_copy(_setuptools.get_requires_for_build_sdist)
prepare_metadata_for_build_wheel = _in_copy(_setuptools.prepare_metadata_for_build_wheel)
build_wheel = _in_copy(_setuptools.build_wheel)
build_sdist = _in_copy(_setuptools.build_sdist)
# Editable installs run in the checkout (they point at it).
get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable
