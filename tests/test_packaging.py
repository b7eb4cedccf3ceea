"""`pip install .` works: the packages, their metadata and the console
scripts, imported from outside the repository."""

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_pip_install_into_a_fresh_environment_imports_from_outside_the_repo(tmp_path):
    # The environment sees the installed TensorFlow/Keras (system site
    # packages) so nothing is downloaded; kd-keras itself is installed into
    # it from a copy of the source tree by pip, as a user would.
    source = tmp_path / "source"  # pip builds in the tree: keep the repo clean.
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "runs", "searches", "build", "*.egg-info", "__pycache__", ".pytest_cache"
        ),
    )
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
        "import kd_keras, tuning, kd_app, kd_keras.config;"
        "print(kd_keras.__file__);"
        "print(kd_keras.__version__);"
        "print(sorted(kd_keras.config.PRESETS));"
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
