"""`pip install .` works: one top-level package (`kd_keras`, with the search
and the app inside), its metadata and the console scripts, run from outside
the repository; the checkout stays clean; the search without its extra says
which extra to install; `kd-keras app` serves the page on localhost."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest

from kd_keras import extras, frontends

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
    assert (installed / "kd_keras" / "tuning" / "__main__.py").is_file()
    assert (installed / "kd_keras" / "app" / "tabs" / "common.py").is_file()
    assert (installed / "kd_keras" / "app" / "streamlit_script.py").is_file()
    top_level = {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")}
    assert top_level == {"kd_keras", "bin"}  # No `tuning`, `kd_app` or `buildsys`.
    entry_points = next(installed.glob("*.dist-info/entry_points.txt")).read_text()
    assert "kd-keras-tune = kd_keras.tuning.__main__:main" in entry_points


def test_every_package_of_the_checkout_is_installed():
    """pyproject.toml lists the packages (package-dir maps tuning/ and
    kd_app/ into kd_keras): a new subpackage must be added there."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+.
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    homes = {"kd_keras": "kd_keras", **setuptools["package-dir"]}
    found = set()
    for package, folder in homes.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join([package, *parts]))
    assert sorted(setuptools["packages"]) == sorted(found)
    assert homes == {"kd_keras": "kd_keras", "kd_keras.tuning": "tuning", "kd_keras.app": "kd_app"}


def test_the_app_command_always_names_a_server_address(tmp_path):
    script = tmp_path / "page.py"
    command = frontends.app_command(["--server.port", "9", "--", "--runs", "r"], script)
    assert command == [
        sys.executable,
        *("-m", "streamlit", "run", str(script), "--server.port", "9"),
        *("--server.address", "localhost", "--", "--runs", "r"),
    ]
    given = frontends.app_command(["--server.address=0.0.0.0"], script)
    assert given[5:] == ["--server.address=0.0.0.0", "--"]
    assert frontends.app_command([], script)[5:] == ["--server.address", "localhost", "--"]
    # From the checkout: the top-level search and app.py.
    assert extras.search_package() == "tuning"
    assert frontends.page_script() == REPO / "app.py"


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


def test_the_public_api_is_the_names_a_user_calls():
    import kd_keras

    assert kd_keras.__all__ == sorted(
        [
            "Distiller",
            "RunConfig",
            "RunFolder",
            "TeacherLogitCache",
            "build_resnet",
            "export_model",
            "export_run",
            "load_teacher",
            "make_dataset",
            "prepare_splits",
            "run_pipeline",
            "with_keras_batch_norm",
        ]
    )
    assert kd_keras.RunConfig.__module__ == "kd_keras.config"
    with pytest.raises(AttributeError, match="no attribute 'DatasetError'"):
        kd_keras.DatasetError  # noqa: B018 (from kd_keras.errors instead)


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
        "import kd_keras, kd_keras.presets;"
        "print(kd_keras.__file__);"
        "print(kd_keras.__version__);"
        "print(sorted(kd_keras.presets.PRESETS));"
        "import importlib.util;"
        "print([m for m in ('kd_keras.data.splits', 'kd_keras.models.resnet',"
        " 'kd_keras.distill.distiller', 'kd_keras.train.pipeline',"
        " 'kd_keras.report.results', 'kd_keras.export.exporter',"
        " 'kd_keras.tuning.search', 'kd_keras.app.page', 'kd_keras.app.tabs.common')"
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
    site = Path(out[0]).parents[1]
    assert not {"tuning", "kd_app", "app.py"} & {p.name for p in site.iterdir()}
    for argv in (
        ["kd-keras", "--help"],
        ["kd-keras", "tune", "--help"],
        ["kd-keras-tune", "--help"],
    ):
        help_text = subprocess.run(
            [str(env_dir / "bin" / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert help_text.returncode == 0, (argv, help_text.stderr[-1000:])
        assert "usage:" in help_text.stdout
        if argv[0] == "kd-keras-tune" or argv[1:2] == ["tune"]:
            assert help_text.stdout.startswith(f"usage: {' '.join(argv[:-1])} ")
    assert "--teacher" in help_text.stdout  # The search's own flags.
    _app_answers_on_localhost(env_dir / "bin" / "kd-keras", tmp_path)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _app_answers_on_localhost(kd_keras_script, folder):
    """`kd-keras app` from the installed package serves the page on
    localhost (bounded wait), then is killed with its whole session."""
    port = _free_port()
    (folder / "runs").mkdir()
    argv = [str(kd_keras_script), "app", "--server.port", str(port), "--server.headless", "true"]
    log = folder / "app.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*argv, "--", "--runs", str(folder / "runs")],
            cwd=folder,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        health, deadline = None, time.monotonic() + 120
        while health is None and time.monotonic() < deadline and server.poll() is None:
            try:
                url = f"http://localhost:{port}/_stcore/health"
                with urllib.request.urlopen(url, timeout=5) as response:
                    health = response.read().decode()
            except OSError:
                time.sleep(1)
        assert health == "ok", log.read_text()[-2000:]
        command = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        script = next(c.decode() for c in command if c.endswith(b"streamlit_script.py"))
        assert str(REPO) not in script and "kd_keras/app/" in script
        assert b"localhost" in command  # The address the page insists on.
    finally:
        os.killpg(server.pid, 9)
        server.wait()
