"""The run-folder and search-folder layout (kd_keras/run_folder.py)."""

import json
import subprocess
import sys

import pytest

from kd_keras.config import RunConfig
from kd_keras.errors import DamagedFileError
from kd_keras.layout import STAGES_DIR, damaged_file_fix
from kd_keras.run_folder import TABLE_COLUMNS, RunFolder, read_history
from kd_keras.search_folder import SearchFolder

# Every module a front end may import without starting TensorFlow.
KERAS_FREE = (
    "kd_keras",
    "kd_keras.config",
    "kd_keras.presets",
    "kd_keras.validation",
    "kd_keras.data.sizes",
    "kd_keras.text",
    "kd_keras.errors",
    "kd_keras.atomic",
    "kd_keras.layout",
    "kd_keras.owned_files",
    "kd_keras.run_folder",
    "kd_keras.train.run_setup",
    "kd_keras.search_folder",
    "kd_keras.stages",
    "kd_keras.hardware",
    "kd_keras.data.cifar10",
    "kd_keras.data.sources",
    "kd_keras.data.image_folders",
    "kd_keras.data.npz",
    "kd_keras.data.source_checks",
    "kd_keras.models.depth",
    "kd_keras.models.specs",
    "kd_keras.export.spec",
    "kd_keras.frontends",
    "kd_keras.export.plan",
    "kd_keras.report.results",
    "kd_keras.report.gains",
    "kd_keras.report.plots",  # matplotlib is imported when a plot is drawn.
    "kd_keras.report.reference",
)


def test_keras_free_modules_import_no_tensorflow():
    code = (
        "import importlib, sys\n"
        f"for name in {KERAS_FREE!r}: importlib.import_module(name)\n"
        "import kd_keras; kd_keras.RunConfig; kd_keras.RunFolder\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_paths_follow_the_documented_layout(tmp_path):
    run = RunFolder(tmp_path / "r")
    assert run.config_file == tmp_path / "r" / "config.json"
    assert run.progress_file.name == "progress.json"
    assert run.stage_file("teacher") == tmp_path / "r" / "stages" / "teacher.json"
    assert (
        run.history_file("student_baseline") == tmp_path / "r" / "history" / "student_baseline.csv"
    )
    assert (
        run.model_file("student_distilled") == tmp_path / "r" / "models" / "student_distilled.keras"
    )
    assert run.checkpoint_dir("teacher") == tmp_path / "r" / "checkpoints" / "teacher"
    assert run.student_init_file.parent == run.checkpoints_dir
    assert run.resume_command(data="d.tar.gz") == (
        f"python -m kd_keras run --resume --out {tmp_path / 'r'} --data d.tar.gz"
    )
    search = SearchFolder(tmp_path / "s")
    assert search.settings_file.name == "search.json"
    assert search.trials_file.name == "trials.csv"
    assert search.best_file.name == "best.json"


def test_state_and_readers(tmp_path):
    run = RunFolder(tmp_path)
    assert not run.is_run()
    assert run.config() is None and run.progress() == {} and run.stage_rows() == []
    config = RunConfig.from_preset("smoke", seed=3)
    run.config_file.write_text(config.to_json())
    (tmp_path / STAGES_DIR).mkdir()
    for stage in ("student_distilled_tuned", "student_baseline", "teacher"):
        run.stage_file(stage).write_text(json.dumps({"stage": stage}))
    run.history_dir.mkdir()
    run.history_file("teacher").write_text("epoch,accuracy\n0,0.5\n1,0.75\n")
    assert run.is_run()
    assert run.config().seed == 3
    # Pipeline stages in pipeline order, then added ones.
    assert run.completed_stages() == ["teacher", "student_baseline", "student_distilled_tuned"]
    assert [r["stage"] for r in run.stage_rows()] == run.completed_stages()
    assert not run.has_teacher()  # No model file yet.
    run.models_dir.mkdir()
    run.model_file("teacher").write_bytes(b"x")
    assert run.has_teacher()
    assert run.history("teacher") == [{"epoch": 0, "accuracy": 0.5}, {"epoch": 1, "accuracy": 0.75}]


def test_damaged_files_name_the_file_and_the_fix(tmp_path):
    run = RunFolder(tmp_path)
    run.config_file.write_text('{"seed": ')
    with pytest.raises(DamagedFileError, match="config.json.*cannot be rebuilt"):
        run.config()
    run.config_file.write_text('{"no_such_field": 1}')
    with pytest.raises(DamagedFileError, match="not a valid run config"):
        run.config()
    (tmp_path / "history").mkdir()
    run.history_file("teacher").write_text("epoch,accuracy\n0\n")
    with pytest.raises(DamagedFileError, match=r"line 2 has .* --resume --out"):
        read_history(run.history_file("teacher"))
    fix = damaged_file_fix(tmp_path / "checkpoints" / "teacher" / "state.npz")
    assert f"delete the folder '{tmp_path / 'checkpoints' / 'teacher'}'" in fix
    assert "--resume" in damaged_file_fix(run.progress_file)


def test_results_csv_has_the_table_columns(tmp_path):
    from kd_keras.report.results import write_results

    rows = [{"stage": "teacher", "model": "resnet8", "test_accuracy": 0.5, "val_accuracy": 0.4}]
    write_results(tmp_path, rows)
    run = RunFolder(tmp_path)
    header = run.results_csv.read_text().splitlines()[0].split(",")
    assert header == list(TABLE_COLUMNS)
    assert run.results()[0]["test_accuracy"] == 0.5
    assert run.bar_plot.is_file() and run.report_plot.is_file()
    assert json.loads(run.results_json.read_text())["rows"] == rows


def test_removal_plan_lists_only_kd_keras_names_and_never_follows_links(tmp_path):
    run = RunFolder(tmp_path / "r")
    run.stages_dir.mkdir(parents=True)
    run.config_file.write_text("{}")
    run.lock_file.write_text("")
    run.stage_file("teacher").write_text("{}")
    (run.path / "notes.txt").write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.keras").write_text("someone's")
    run.models_dir.symlink_to(outside)  # kd_keras's name: the link itself goes.
    (run.path / "photos").symlink_to(outside)  # Not kd_keras's: stays.
    (run.stages_dir / ".teacher.ab12cd34.tmp.json").write_text("half")
    plan = run.removal_plan()
    rel = lambda paths: sorted(str(p.relative_to(run.path)) for p in paths)  # noqa: E731
    assert rel(plan.files) == [
        "config.json",
        "models",
        "stages/.teacher.ab12cd34.tmp.json",
        "stages/teacher.json",
    ]
    assert rel(plan.folders) == ["stages"] and plan.trees == [] and plan.refused == []
    assert rel(plan.kept) == ["notes.txt", "photos"]  # run.lock is never listed.
    assert run.symlinked_folders() == [run.models_dir]
    from kd_keras.errors import RunFolderError
    from kd_keras.owned_files import remove_planned

    with pytest.raises(RunFolderError, match="'models' in .* is a symbolic link"):
        run.check_real_folders()
    remove_planned(plan)
    assert sorted(p.name for p in run.path.iterdir()) == ["notes.txt", "photos", "run.lock"]
    assert (outside / "x.keras").read_text() == "someone's"


def test_search_removal_plan_keeps_a_users_files(tmp_path):
    search = SearchFolder(tmp_path / "s")
    (search.path / "trial_03").mkdir(parents=True)
    for name in ("search.json", "oracle.json", "tuner0.json", "trials.csv", "notes.md"):
        (search.path / name).write_text("x")
    for name in ("trial.json", "checkpoint.weights.h5", "kd_trial.json", "mine.png"):
        (search.path / "trial_03" / name).write_text("x")
    plan = search.removal_plan()
    assert sorted(p.name for p in plan.kept) == ["mine.png", "notes.md"]
    assert len(plan.files) == 7 and plan.folders == [search.path / "trial_03"]
