"""`pip install .` works: the packages, their metadata and the console
scripts, imported from outside the repository; the checkout stays clean;
the search without its extra says which extra to install."""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from kd_keras import extras

REPO = Path(__file__).resolve().parent.parent
COPY_IGNORE = shutil.ignore_patterns(
    ".git", "runs", "searches", "results", "build", "*.egg-info", "__pycache__", ".pytest_cache"
)


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_pip_install_leaves_the_source_tree_as_it_was(tmp_path):
    # A real `pip install . --target`, as a user runs it in a checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    before = _tree(source)
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(tmp_path / "target"),
            ".",
        ],
        capture_output=True,
        text=True,
        cwd=source,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert _tree(source) == before  # No build/, no kd_keras.egg-info.
    installed = tmp_path / "target"
    assert (installed / "kd_keras" / "quiet.py").is_file()
    assert (installed / "tuning" / "__main__.py").is_file()
    assert (
        not (installed / "buildsys").exists()
        and not (installed / "isolated_setuptools.py").exists()
    )
    assert (
        "tuning.__main__:main" in next(installed.glob("*.dist-info/entry_points.txt")).read_text()
    )


def _without_keras_tuner(tmp_path, *args):
    """Runs python with `args` where importing keras_tuner fails (a
    sitecustomize sets its sys.modules entry to None)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['keras_tuner'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


@pytest.mark.parametrize("argv", [["--help"], [], ["--trials", "3"]])
def test_the_search_without_its_extra_names_the_extra_in_one_line(tmp_path, argv):
    result = _without_keras_tuner(tmp_path, "-m", "tuning", *argv)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "tuning: error: the T/alpha search needs the 'tuning' extra (keras_tuner is not "
        'installed); install it with: pip install "kd-keras[tuning]"\n'
    )


def test_importing_the_search_without_its_extra_raises_that_message(tmp_path):
    code = (
        "try:\n    import tuning\nexcept ModuleNotFoundError as error:\n"
        "    print(error.name, '|', error)\n"
    )
    result = _without_keras_tuner(tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("keras_tuner | the T/alpha search needs the 'tuning' extra")


def test_running_as_a_program_is_told_from_argv():
    assert extras.running_as_program(["-m", "--help"])
    assert extras.running_as_program(["/env/bin/kd-keras-tune", "--help"])
    assert not extras.running_as_program(["-c"])
    assert not extras.running_as_program(["/usr/bin/pytest"])
    assert extras.missing_extra("tuning") is None  # Installed here.


@pytest.mark.slow
def test_pip_install_into_a_fresh_environment_imports_from_outside_the_repo(tmp_path):
    # The environment sees the installed TensorFlow/Keras (system site
    # packages) so nothing is downloaded; kd-keras itself is installed into
    # it from a copy of the source tree by pip, as a user would.
    source = tmp_path / "source"  # A copy, as a user's checkout.
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    env_dir = tmp_path / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    code = (
        "import kd_keras, tuning, kd_app, kd_keras.presets;"
        "print(kd_keras.__file__);"
        "print(kd_keras.__version__);"
        "print(sorted(kd_keras.presets.PRESETS));"
        "import importlib.util;"
        "print([m for m in ('kd_keras.data.splits', 'kd_keras.models.resnet',"
        " 'kd_keras.distill.distiller', 'kd_keras.train.pipeline',"
        " 'kd_keras.report.results', 'kd_keras.export.exporter')"
        " if importlib.util.find_spec(m) is None])"
    )
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    ).stdout.splitlines()
    assert str(env_dir) in out[0] and str(source) not in out[0]
    assert str(REPO) not in out[0]
    assert out[1] == __import__("kd_keras").__version__
    assert "quick" in out[2] and "full" in out[2]
    assert out[3] == "[]"  # Every subpackage is installed.
    for script in ("kd-keras", "kd-keras-tune"):
        help_text = subprocess.run(
            [str(env_dir / "bin" / script), "--help"], capture_output=True, text=True, cwd=tmp_path
        )
        assert help_text.returncode == 0, help_text.stderr[-1000:]
        assert "usage:" in help_text.stdout
