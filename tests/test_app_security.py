"""The app is confined to the operator's roots (`kd_app.confine`): generated
adversarial inputs (symlinks out of the runs root, `..` and absolute export
rows, a symlinked log, run names with `/`, parallel starts) reach nothing
outside it, and the page is no oracle for the server's files."""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from app_smoke import APP  # noqa: F401 (puts the repository on sys.path)

from kd_app import checks, confine, launching, processes, results, searches, settings, teachers
from kd_app import run_state as states
from kd_keras.errors import LaunchError
from kd_keras.run_folder import RunFolder


def digest_tree(folder):
    """`{relative path: sha256}` of every file under `folder` (no symlinks followed)."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent) / name
            found[str(path.relative_to(folder))] = (
                "link" if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
            )
    return found


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A runs root, a CIFAR-10 default (a fake archive) and an `outside`
    folder holding a user's files, a run-looking folder and a secret."""
    runs = tmp_path / "runs"
    runs.mkdir()
    outside = tmp_path / "outside"
    (outside / "victim").mkdir(parents=True)
    (outside / "victim" / "config.json").write_text(json.dumps({"preset": "smoke"}))
    (outside / "victim" / "progress.json").write_text(json.dumps({"status": "finished"}))
    (outside / "victim" / "thesis.tex").write_text("years of work")
    (outside / "secret.txt").write_text("the server's secret")
    (outside / "teacher.keras").write_bytes(b"PK not a model")
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"")
    monkeypatch.setenv(settings.RUNS_ENV_VAR, str(runs))
    monkeypatch.setenv(settings.DATA_ENV_VAR, str(archive))
    monkeypatch.delenv(settings.DATA_ROOT_ENV_VAR, raising=False)
    return runs, outside, archive


def test_the_runs_root_is_the_operators_not_the_pages(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.RUNS_ENV_VAR, str(tmp_path / "env"))
    assert confine.runs_root([]) == (tmp_path / "env").resolve()
    # `streamlit run app.py -- --runs DIR` wins over the environment.
    assert confine.runs_root(["--runs", str(tmp_path / "arg")]) == (tmp_path / "arg").resolve()
    monkeypatch.delenv(settings.RUNS_ENV_VAR)
    assert confine.runs_root([]) == Path("runs").resolve()
    assert confine.runs_root(["--ru", "x"]) == Path("runs").resolve()  # No abbreviations.
    monkeypatch.delenv(settings.DATA_ROOT_ENV_VAR, raising=False)
    roots = confine.data_roots(tmp_path, ["--data", "elsewhere"])
    assert roots == [tmp_path.resolve()]


def test_the_page_has_no_runs_folder_field(roots):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "runs_dir" not in [t.key for t in at.sidebar.text_input]
    assert [t.label for t in at.sidebar.text_input] == ["Data source"]
    assert any(str(roots[0]) in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("name", ["../outside/victim", "a/b", "/etc", "..", "x/../y", ""])
def test_names_with_a_slash_or_dots_never_leave_the_root(roots, name):
    runs, outside, archive = roots
    if name != "a/b":  # A sub-path (as an export row's file) may stay inside.
        with pytest.raises(LaunchError):
            confine.within(runs, name, "run name")
    if name:
        options = launching.LaunchOptions(
            preset="smoke", name=name, data=str(archive), if_exists="overwrite"
        )
        with pytest.raises(LaunchError, match="not usable"):
            launching.start_run(options, runs)
    assert digest_tree(outside)["victim/thesis.tex"]
    assert sorted(p.name for p in runs.iterdir()) == []  # Nothing written, not even a lock.


def test_a_symlinked_run_folder_out_of_the_root_is_not_a_run_and_not_overwritten(roots):
    runs, outside, archive = roots
    before = digest_tree(outside)
    (runs / "evil").symlink_to(outside / "victim")
    assert states.list_runs(runs) == []  # Not listed, so not shown nor read.
    options = launching.LaunchOptions(
        preset="smoke", name="evil", data=str(archive), if_exists="overwrite"
    )
    errors = launching.validate_launch(options, runs)
    assert len(errors) == 1 and "leads out of" in errors[0] and "\n" not in errors[0]
    with pytest.raises(LaunchError, match="leads out of"):
        launching.start_run(options, runs)
    with pytest.raises(LaunchError, match="leads out of"):
        launching.resume_run(runs / "evil", runs)
    assert digest_tree(outside) == before


def test_overwrite_only_of_a_run_whose_config_parses(roots):
    runs, _, archive = roots
    folder = runs / "web"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"compilerOptions": {}}))
    (folder / "index.ts").write_text("user code")
    before = digest_tree(folder)
    options = launching.LaunchOptions(
        preset="smoke", name="web", data=str(archive), if_exists="overwrite"
    )
    (error,) = launching.validate_launch(options, runs)
    assert "not a kd_keras run this app can replace" in error and "\n" not in error
    with pytest.raises(LaunchError, match="not a kd_keras run"):
        launching.start_run(options, runs)
    assert digest_tree(folder) == before
    # A real kd_keras config: the overwrite is the CLI's `--overwrite`.
    (folder / "config.json").write_text(json.dumps({"preset": "smoke"}))
    assert launching.validate_launch(options, runs) == []
    assert launching.run_command(options, folder)[-1] == "--overwrite"


def test_export_rows_with_absolute_or_dotted_files_are_not_offered(roots):
    runs, outside, _ = roots
    folder = runs / "r"
    (folder / "export" / "teacher").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "models" / "teacher.keras").write_bytes(b"model")
    (folder / "config.json").write_text(json.dumps({"preset": "smoke"}))
    source = hashlib.sha256(b"model").hexdigest()
    good = folder / "export" / "teacher" / "int8.tflite"
    good.write_bytes(b"tflite bytes")
    (folder / "export" / "teacher" / "escape.tflite").symlink_to(outside / "secret.txt")
    variants = {
        "int8": "export/teacher/int8.tflite",
        "float16": str(outside / "secret.txt"),  # Absolute.
        "dynamic": "export/teacher/../../../../outside/secret.txt",  # Dots.
        "float32": "export/teacher/escape.tflite",  # A symlink out.
    }
    for variant, file in variants.items():
        row = {"stage": f"teacher@{variant}", "file": file, "source_sha256": source}
        (folder / "export" / "teacher" / f"{variant}.json").write_text(json.dumps(row))
    rows = results.exported_models(folder)
    assert [row["path"] for row in rows] == [good]
    assert results.export_download(good, folder)[0] == b"tflite bytes"
    for path in (outside / "secret.txt", folder / "export" / "teacher" / "escape.tflite"):
        with pytest.raises(LaunchError, match="leads out of the run folder"):
            results.export_download(path, folder)


def test_downloads_and_zips_leave_symlinks_out(roots):
    runs, outside, _ = roots
    folder = runs / "r"
    saved = folder / "export" / "teacher" / "saved_model"
    saved.mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "leak.txt").symlink_to(outside / "secret.txt")
    (saved / "variables").symlink_to(outside, target_is_directory=True)
    data, name, _ = results.export_download(saved, folder)
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["saved_model/saved_model.pb"]
        assert b"secret" not in b"".join(archive.read(n) for n in archive.namelist())
    run = RunFolder(folder)
    run.results_csv.symlink_to(outside / "secret.txt")
    assert results.download_bytes(folder, run.results_csv) is None
    assert results.results_table(folder) is None
    (folder / "config.json").symlink_to(outside / "victim" / "config.json")
    assert states.run_state(folder).config == {}  # Not read through the link.


def test_the_data_field_is_no_oracle_for_the_servers_files(roots, tmp_path):
    runs, outside, archive = roots
    exists = checks.check_data_path(str(outside / "secret.txt"), runs)
    missing = checks.check_data_path(str(outside / "nothing.txt"), runs)
    assert len(exists) == len(missing) == 1
    assert exists[0].replace("secret", "X") == missing[0].replace("nothing", "X")
    assert "does not exist" not in missing[0] and "not inside" in missing[0]
    # Through a symlink in the runs root: the same refusal.
    (runs / "data").symlink_to(outside, target_is_directory=True)
    assert "not inside" in checks.check_data_path("data/secret.txt", runs)[0]
    # The operator's archive, and sources inside the roots, are accepted.
    assert checks.check_data_path(str(archive), runs) == []
    (runs / "images").mkdir()
    assert checks.check_data_path("images", runs) == []
    assert "does not exist" in checks.check_data_path("missing", runs)[0]


def test_a_data_root_given_by_the_operator(roots, tmp_path, monkeypatch):
    runs, outside, _ = roots
    monkeypatch.setenv(settings.DATA_ROOT_ENV_VAR, str(outside))
    assert checks.check_data_path("victim", runs) == []  # Relative to the data root.
    assert checks.resolve_data("victim", runs)[0] == (outside / "victim").resolve()
    assert "not inside" in checks.check_data_path(str(tmp_path), runs)[0]


def test_teachers_and_model_files_only_from_inside_the_runs_root(roots):
    runs, outside, _ = roots
    (runs / "t.keras").symlink_to(outside / "teacher.keras")
    for teacher in (str(outside / "teacher.keras"), "t.keras", "../outside/teacher.keras"):
        (error,) = checks.check_teacher(teacher, runs)
        assert "not inside" in error, error
    (error,) = checks.check_models(str(outside / "teacher.keras"), "", runs)
    assert "not inside" in error
    (runs / "mine").mkdir()
    (runs / "mine" / "teacher.keras").write_bytes(b"x")
    assert checks.check_teacher("mine/teacher.keras", runs) == []
    assert checks.check_teacher(str(runs / "mine" / "teacher.keras"), runs) == []
    options = searches.TuneOptions(name="s", teacher=str(outside / "teacher.keras"), data="x")
    assert any("not inside" in e for e in searches.validate_search(options, runs))


def test_a_symlinked_log_is_refused_and_its_target_untouched(roots):
    runs, outside, _ = roots
    target = outside / "secret.txt"
    before = target.read_bytes()
    folder = runs / "r"
    log, _ = processes.launch_files(folder)
    log.symlink_to(target)
    with pytest.raises(LaunchError, match="Cannot write the log"):
        processes.start([sys.executable, "-c", "print('hi')"], folder, kind="run", what="start")
    assert target.read_bytes() == before
    assert not processes.launch_files(folder)[1].exists()  # Nothing started.
    # A new log is created; an existing one is appended to.
    log.unlink()
    for word in ("one", "two"):
        pid = processes.start(
            [sys.executable, "-c", f"print('{word}')"], folder, kind="run", what="start"
        )
        deadline = time.time() + 30
        while processes.pid_alive(pid) and time.time() < deadline:
            time.sleep(0.05)
    text = log.read_text()
    assert "one" in text and "two" in text and not log.is_symlink()
    with pytest.raises(LaunchError):
        confine.open_log(runs)  # Not a regular file.


def fake_run_argv(options, out):
    """A process that looks like `python -m kd_keras run --out OUT` and sleeps."""
    code = "import time; time.sleep(60)"
    return [sys.executable, "-c", code, "-m", "kd_keras", "run", "--out", str(out)]


def test_parallel_starts_under_one_root_start_one_run(roots, monkeypatch):
    runs, _, archive = roots
    monkeypatch.setattr(launching, "run_command", fake_run_argv)
    outcomes = {}
    barrier = threading.Barrier(3)

    def launch(name):
        barrier.wait()
        try:
            outcomes[name] = launching.start_run(
                launching.LaunchOptions(preset="smoke", name=name, data=str(archive)), runs
            )[1]
        except LaunchError as error:
            outcomes[name] = str(error)

    threads = [threading.Thread(target=launch, args=(f"r{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    pids = [v for v in outcomes.values() if isinstance(v, int)]
    try:
        assert len(pids) == 1, outcomes
        refusals = [v for v in outcomes.values() if isinstance(v, str)]
        assert len(refusals) == 2 and all("Only one run at a time" in r for r in refusals)
        assert [s.pid for s in states.alive_runs(runs)] == pids
    finally:
        for pid in pids:
            os.kill(pid, 9)


def test_started_elsewhere_with_no_address_the_page_does_nothing(roots, tmp_path):
    """From another folder `.streamlit/config.toml` is not read and Streamlit
    would listen on every interface: the page says so and offers nothing."""
    code = (
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(APP)!r}, default_timeout=60).run()\n"
        "assert not at.exception, at.exception\n"
        "assert not at.tabs and not at.button, 'the page offers its tabs'\n"
        "assert 'listens on every network interface' in at.error[0].value\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(APP.parent)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_symlinked_launch_record_or_search_is_not_read(roots):
    runs, outside, _ = roots
    (outside / "r.launch.json").write_text(json.dumps({"pid": 1, "kind": "run", "argv": []}))
    (runs / "r.launch.json").symlink_to(outside / "r.launch.json")
    assert processes.read_launch(runs / "r") is None
    assert states.list_runs(runs) == []
    (runs / "tuning").symlink_to(outside, target_is_directory=True)
    assert searches.list_searches(runs) == []


def test_an_uploaded_teacher_is_saved_new_inside_the_root(roots):
    import io

    runs, outside, _ = roots
    assert teachers.store_teacher(runs, "mine.keras", io.BytesIO(b"model")) == "teachers/mine.keras"
    assert (runs / "teachers" / "mine.keras").read_bytes() == b"model"
    assert teachers.uploaded_teachers(runs) == [runs / "teachers" / "mine.keras"]
    assert checks.check_teacher("teachers/mine.keras", runs) == []
    assert states.list_runs(runs) == []  # teachers/ is not a run,
    assert "not usable" in checks.check_name("teachers", "Run", ("tuning", "teachers"))[0]
    with pytest.raises(LaunchError, match="already in the runs folder"):
        teachers.store_teacher(runs, "mine.keras", io.BytesIO(b"other"))
    assert (runs / "teachers" / "mine.keras").read_bytes() == b"model"
    for bad in ("../x.keras", "a/b.keras", "x.h5", ".keras", "x y.keras"):
        with pytest.raises(LaunchError, match="must be <name>.keras"):
            teachers.store_teacher(runs, bad, io.BytesIO(b"x"))
    # A symlink in place of the file, or of the folder: never written through.
    (runs / "teachers" / "evil.keras").symlink_to(outside / "secret.txt")
    with pytest.raises(LaunchError):
        teachers.store_teacher(runs, "evil.keras", io.BytesIO(b"overwritten"))
    assert (outside / "secret.txt").read_text() == "the server's secret"
    assert teachers.uploaded_teachers(runs) == [runs / "teachers" / "mine.keras"]
    (runs / "teachers" / "evil.keras").unlink()
    (runs / "teachers" / "mine.keras").unlink()
    (runs / "teachers").rmdir()
    (runs / "teachers").symlink_to(outside, target_is_directory=True)
    with pytest.raises(LaunchError, match="leads out of"):
        teachers.store_teacher(runs, "new.keras", io.BytesIO(b"x"))
    assert not (outside / "new.keras").exists() and teachers.uploaded_teachers(runs) == []


@pytest.mark.parametrize(
    "weights",
    ["/etc/passwd.weights.h5", "../outside/w.weights.h5", "../../outside/w.weights.h5", "l/w.h5"],
)
def test_a_models_weights_file_only_from_inside_the_runs_root(roots, weights):
    runs, outside, _ = roots
    (outside / "w.weights.h5").write_bytes(b"secret weights")
    (runs / "l").symlink_to(outside, target_is_directory=True)
    (runs / "x.npz").write_bytes(b"")
    for role in ("teacher_model", "student_model"):
        options = launching.LaunchOptions(
            preset="smoke", name="r9", data="x.npz", **{role: f"mobilenetv3small:weights={weights}"}
        )
        errors = launching.validate_launch(options, runs)
        assert len(errors) == 1 and "not inside" in errors[0], errors
        assert f"{role.partition('_')[0]} model's weights file" in errors[0]
    # The same message whether or not the file exists: no oracle.
    exists = checks.check_models("", f"efficientnetb0:weights={outside}/w.weights.h5", runs)
    missing = checks.check_models("", f"efficientnetb0:weights={outside}/n.weights.h5", runs)
    assert exists[0].replace("/w.", "/X.") == missing[0].replace("/n.", "/X.")


def test_a_models_weights_file_inside_the_runs_root_goes_absolute_into_the_command(roots):
    runs, _, _ = roots
    (runs / "mine").mkdir()
    (runs / "mine" / "w.weights.h5").write_bytes(b"w")
    spec = "mobilenetv3small:alpha=0.75,weights=mine/w.weights.h5,minimalistic=true"
    assert checks.check_models("", spec, runs) == []
    options = launching.LaunchOptions(preset="smoke", name="r9", data="x.npz", student_model=spec)
    argv = launching.run_command(launching.resolved_options(options, runs), runs / "r9")
    weights = (runs / "mine" / "w.weights.h5").resolve()
    assert f"mobilenetv3small:alpha=0.75,weights={weights},minimalistic=true" in argv
    (error,) = checks.check_models("", "mobilenetv3small:weights=mine/n.weights.h5", runs)
    assert "does not exist" in error
    # A .keras spec is resolved inside the root too.
    (runs / "mine" / "m.keras").write_bytes(b"x")
    options = launching.LaunchOptions(preset="smoke", teacher_model="mine/m.keras")
    teacher_model = launching.resolved_options(options, runs).teacher_model
    assert teacher_model == str((runs / "mine" / "m.keras").resolve())


def test_overlong_paths_get_a_short_one_line_refusal(roots):
    runs, _, _ = roots
    for errors in (
        checks.check_teacher("a" * 5000 + ".keras", runs),
        checks.check_data_path("a/" * 3000, runs),
        checks.check_models("a" * 5000 + ".keras", "", runs),
        checks.check_models("", "efficientnetb0:weights=" + "b" * 5000 + ".h5", runs),
        checks.check_data_path("/" + "c" * 5000, runs),
    ):
        (error,) = errors
        assert "\n" not in error and len(error) < 800, error
        assert not any(c * 200 in error for c in "abc"), error
        assert "cannot be used" in error or "not inside" in error, error
    with pytest.raises(LaunchError) as raised:
        confine.within(runs, "d" * 5000, "run name")
    assert len(str(raised.value)) < 500


def test_hard_links_are_neither_appended_to_nor_offered(roots):
    runs, outside, _ = roots
    target = outside / "secret.txt"
    before = target.read_bytes()
    folder = runs / "r"
    log, _ = processes.launch_files(folder)
    log.parent.mkdir(parents=True, exist_ok=True)
    os.link(target, log)
    with pytest.raises(LaunchError, match="Cannot write the log.*hard link"):
        confine.open_log(log)
    assert target.read_bytes() == before
    # An export: a hard link in a SavedModel folder, or as the .tflite file.
    saved = folder / "export" / "teacher" / "saved_model"
    saved.mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    data, _, _ = results.export_download(saved, folder)
    assert data
    os.link(target, saved / "leak.txt")
    with pytest.raises(LaunchError, match="hard link"):
        results.export_download(saved, folder)
    tflite = folder / "export" / "teacher" / "model.tflite"
    os.link(target, tflite)
    with pytest.raises(LaunchError, match="hard link"):
        results.export_download(tflite, folder)
    run = RunFolder(folder)
    os.link(target, run.results_csv)
    assert results.download_bytes(folder, run.results_csv) is None


def test_a_teachers_file_in_place_of_the_folder_is_named(roots):
    import io

    runs, _, _ = roots
    (runs / "teachers").write_text("not a folder")
    with pytest.raises(LaunchError, match="'teachers' in the runs folder .* is not a folder"):
        teachers.store_teacher(runs, "new.keras", io.BytesIO(b"x"))
    assert (runs / "teachers").read_text() == "not a folder"
