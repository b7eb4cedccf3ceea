"""Tests of the `tuning` package: the Keras Tuner search over T and alpha.

Tiny everything (ResNet-8 of width 4, 10 training and 5 validation images
per class, 1 epoch), so a trial takes a few seconds on a 2-core CPU. The
accuracies are near chance; the tests check the machinery, not the result.
"""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import keras
import keras_tuner
import numpy as np
import pytest

import kd_keras
from kd_keras import RunConfig
from kd_keras.errors import RunFolderError, SearchError
from kd_keras.search_folder import TRIAL_COLUMNS
from tuning import (
    DistillationHyperModel,
    SearchSpace,
    build_tuner,
    load_best,
    load_trials,
    main,
    run_best,
    run_search,
)

SPACE = SearchSpace(temperature_min=2.0, temperature_max=8.0, alpha_min=0.2, alpha_max=0.6)


def tiny_config(**overrides):
    fields = dict(
        student_depth=8,
        student_width=4,
        train_per_class=10,
        val_per_class=5,
        test_per_class=5,
        batch_size=50,
        student_epochs=1,
        verbose=0,
    )
    fields.update(overrides)
    return RunConfig.from_preset("smoke", **fields)


@pytest.fixture(scope="session")
def teacher_path(tmp_path_factory):
    """An untrained tiny teacher: the search only needs its logits."""
    keras.utils.set_random_seed(123)
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    kd_keras.build_resnet(8, width=4, name="teacher_resnet8").save(path)
    return path


@pytest.fixture(scope="session")
def tiny_splits(cifar10_archive, shared_cache):
    config = tiny_config()
    return kd_keras.prepare_splits(
        cifar10_archive,
        val_size=config.val_size,
        train_per_class=config.train_per_class,
        val_per_class=config.val_per_class,
        test_per_class=config.test_per_class,
        seed=config.seed,
        cache_dir=shared_cache,
    )


def search(folder, teacher_path, splits, **kwargs):
    options = dict(
        config=tiny_config(), space=SPACE, tuner="random", max_trials=2, epochs=1, verbose=0
    )
    options.update(kwargs)
    return run_search(teacher_path, splits, folder, **options)


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, teacher_path, tiny_splits):
    """One 2-trial random search, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("searches") / "random"
    return search(folder, teacher_path, tiny_splits)


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


# --- The search space (no training) ---


@pytest.mark.parametrize(
    "fields, bad",
    [
        (dict(temperature_min=5.0, temperature_max=2.0), "[5, 2]"),
        (dict(temperature_min=4.0, temperature_max=4.0), "[4, 4]"),
        (dict(temperature_min=0.0, temperature_max=4.0), "got 0"),
        (dict(temperature_min=-1.0), "got -1"),
        (dict(alpha_min=-0.1), "-0.1"),
        (dict(alpha_max=1.5), "1.5"),
        (dict(alpha_min=0.7, alpha_max=0.3), "[0.7, 0.3]"),
        (dict(alpha_step=0.0), "got 0"),
        (dict(alpha_min=0.2, alpha_max=0.4, alpha_step=0.5), "got 0.5"),
        (dict(temperature_step=1.0), "got 1"),
        (dict(fixed_temperature=0.0), "got 0"),
        (dict(fixed_alpha=2.0), "got 2"),
        (dict(temperature_max=float("nan")), "nan"),
        (dict(alpha_min=True), "True"),
    ],
)
def test_search_space_rejects_bad_ranges_naming_the_value(fields, bad):
    with pytest.raises(ValueError) as error:
        SearchSpace(**fields)
    assert bad in str(error.value)


def test_search_space_declares_log_temperature_and_fixed_values():
    hp = keras_tuner.HyperParameters()
    temperature, alpha = SPACE.declare(hp)
    assert SPACE.contains(temperature, alpha)
    declared = {h.name: h for h in hp.space}
    assert declared["temperature"].sampling == "log"
    assert declared["alpha"].sampling == "linear"
    hp = keras_tuner.HyperParameters()
    assert SearchSpace(fixed_temperature=4.0, fixed_alpha=0.3).declare(hp) == (4.0, 0.3)
    assert {type(h).__name__ for h in hp.space} == {"Fixed"}


@pytest.mark.parametrize(
    "fields, bad",
    [
        (dict(methods=("hinton", "crd")), "'crd'"),
        (dict(methods=()), "()"),
        (dict(methods=("dkd", "dkd")), "['dkd', 'dkd']"),
        (dict(methods=("hinton",), dkd_beta_range=(1.0, 8.0)), "['hinton']"),
        (dict(dkd_beta_range=(8.0, 2.0)), "[8, 2]"),
        (dict(dkd_beta_range=(0.0, 2.0)), "[0, 2]"),
        (dict(dkd_beta_range=(2.0,)), "(2.0,)"),
    ],
)
def test_search_space_rejects_bad_methods_naming_the_value(fields, bad):
    with pytest.raises(ValueError) as error:
        SearchSpace(**fields)
    assert bad in str(error.value)


def test_search_space_declares_methods_and_dkd_beta_only_for_dkd():
    space = SearchSpace(methods=["hinton", "dkd"], dkd_beta_range=[2.0, 16.0])
    assert space.methods == ("hinton", "dkd")  # Lists are held as tuples.
    assert SearchSpace(**json.loads(json.dumps(space.to_dict()))) == space
    config = tiny_config()
    seen = {}
    for seed in range(12):
        hp = keras_tuner.HyperParameters()
        hp.values["method"] = ("hinton", "dkd")[seed % 2]
        _, _, changes = space.declare_trial(hp, config)
        seen[changes["method"]] = changes
        assert ("dkd_beta" in changes) == (changes["method"] == "dkd")
    assert set(seen) == {"hinton", "dkd"}
    assert 2.0 <= seen["dkd"]["dkd_beta"] <= 16.0
    declared = {h.name: h for h in hp.space}
    assert declared["dkd_beta"].sampling == "log"
    assert declared["dkd_beta"].conditions  # Active only for method dkd.
    # The default trial: Hinton KD at the config's T and alpha.
    assert space.default_values(4.0, 0.3) == {"temperature": 4.0, "alpha": 0.3, "method": "hinton"}
    assert SearchSpace(methods=("at", "dkd")).default_values(4.0, 0.3)["method"] == "at"
    assert "method" not in SPACE.default_values(4.0, 0.3)
    # A fixed method that is not DKD cannot have DKD's beta searched.
    with pytest.raises(ValueError, match="method is 'hinton'"):
        SearchSpace(dkd_beta_range=(1.0, 4.0)).check_config(config)
    SearchSpace(dkd_beta_range=(1.0, 4.0)).check_config(tiny_config(method="dkd"))
    with pytest.raises(ValueError, match="'fitnets' cannot be searched"):
        SearchSpace(methods=("dkd", "fitnets")).check_config(
            tiny_config(logit_standardization=True)
        )


def test_a_search_of_methods_records_each_trials_method(teacher_path, tiny_splits, tmp_path):
    space = SearchSpace(
        fixed_temperature=4.0,
        fixed_alpha=0.3,
        methods=("hinton", "dkd", "at", "fitnets"),
        dkd_beta_range=(2.0, 16.0),
    )
    result = search(tmp_path / "methods", teacher_path, tiny_splits, space=space, max_trials=6)
    rows = load_trials(result.folder)
    assert len(rows) == 6 and all(r["status"] == "COMPLETED" for r in rows)
    trials = result.tuner.oracle.trials
    for row in rows:
        values = trials[row["trial_id"]].hyperparameters.values
        assert row["method"] == values["method"]
        if row["method"] == "dkd":
            assert row["dkd_beta"] == pytest.approx(values["dkd_beta"])
            assert 2.0 <= row["dkd_beta"] <= 16.0
        else:
            assert row["dkd_beta"] is None
    assert rows[0]["method"] == "hinton"  # The default comes first.
    # The feature methods ran their live teacher beside the logit cache.
    assert {"at", "fitnets"} & {r["method"] for r in rows}
    best = load_best(result.folder)
    best_row = next(r for r in rows if r["trial_id"] == best["trial_id"])
    assert best["method"] == best_row["method"]
    assert best["default_trial_id"] == rows[0]["trial_id"]
    saved = json.loads((result.folder / "search.json").read_text())
    assert saved["space"]["methods"] == ["hinton", "dkd", "at", "fitnets"]
    assert saved["config"]["method"] == "hinton"


def test_every_trial_starts_from_the_same_student(teacher_path):
    teacher = kd_keras.load_teacher(teacher_path)
    config = tiny_config(precision="float32", teacher_precision="float32")
    hypermodel = DistillationHyperModel(
        teacher, steps_per_epoch=2, epochs=1, config=config, space=SPACE
    )
    first = hypermodel.build(keras_tuner.HyperParameters())
    second = hypermodel.build(keras_tuner.HyperParameters())
    for a, b in zip(first.student.get_weights(), second.student.get_weights()):
        assert (a == b).all()
    assert first.student is not second.student and first.teacher is second.teacher
    # The teacher runs as the pipeline runs it: batch norm folded, same logits.
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in first.teacher.layers
    )
    np.testing.assert_allclose(
        first.teacher(images, training=False), teacher(images, training=False), atol=1e-4
    )
    # The same student kd_keras's pipeline starts from (seed + 1).
    keras.utils.set_random_seed(tiny_config().seed + 1)
    reference = kd_keras.build_resnet(8, width=4)
    for a, b in zip(first.student.get_weights(), reference.get_weights()):
        assert (a == b).all()


def test_hypermodel_applies_the_configs_precision_options(teacher_path):
    teacher = kd_keras.load_teacher(teacher_path)
    config = dataclasses.replace(
        tiny_config(), precision="mixed_bfloat16", teacher_precision="bfloat16"
    )
    hypermodel = DistillationHyperModel(
        teacher, steps_per_epoch=2, epochs=1, config=config, space=SPACE
    )
    distiller = hypermodel.build(keras_tuner.HyperParameters())
    assert distiller.student.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert distiller.teacher.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert distiller.student.get_layer("logits").compute_dtype == "float32"


def _unchecked_space(**fields):
    # SearchSpace validates in __post_init__; make one that skipped it, to
    # check that the hypermodel validates again.
    space = object.__new__(SearchSpace)
    for field in dataclasses.fields(SearchSpace):
        object.__setattr__(space, field.name, fields.get(field.name, field.default))
    return space


def test_hypermodel_validates_its_arguments(teacher_path):
    teacher = kd_keras.load_teacher(teacher_path)
    with pytest.raises(ValueError, match="alpha_max must be in \\[0, 1\\].*got 3"):
        DistillationHyperModel(teacher, steps_per_epoch=2, space=_unchecked_space(alpha_max=3.0))
    with pytest.raises(ValueError, match="steps_per_epoch must be an int >= 1, got 0"):
        DistillationHyperModel(teacher, steps_per_epoch=0)


@pytest.mark.parametrize("name", ["random", "bayesian", "hyperband"])
def test_tuners_are_selected_by_name(name, teacher_path, tmp_path):
    if name == "bayesian":
        pytest.importorskip("sklearn")
    hypermodel = DistillationHyperModel(
        kd_keras.load_teacher(teacher_path),
        steps_per_epoch=2,
        epochs=3,
        config=tiny_config(),
        space=SPACE,
    )
    tuner = build_tuner(name, hypermodel, tmp_path / name, max_trials=4, epochs=3)
    expected = {
        "random": keras_tuner.RandomSearch,
        "bayesian": keras_tuner.BayesianOptimization,
        "hyperband": keras_tuner.Hyperband,
    }[name]
    assert isinstance(tuner, expected)
    assert tuner.oracle.objective.name == "val_accuracy"
    assert tuner.oracle.objective.direction == "max"
    assert tuner.oracle.max_trials == 4
    assert Path(tuner.project_dir) == (tmp_path / name).resolve()


# --- A real search (tiny) ---


def test_search_writes_one_row_per_trial(finished_search, tiny_splits):
    folder = finished_search.folder
    trials = finished_search.tuner.oracle.trials
    assert len(trials) == 2
    rows = read_csv(folder / "trials.csv")
    assert tuple(rows[0]) == TRIAL_COLUMNS
    assert [r["trial_id"] for r in rows] == sorted(trials)
    val_images = len(tiny_splits["val"][1])
    for row in rows:
        assert row["status"] == "COMPLETED"
        values = trials[row["trial_id"]].hyperparameters.values
        assert float(row["temperature"]) == pytest.approx(values["temperature"])
        assert float(row["alpha"]) == pytest.approx(values["alpha"])
        assert 2.0 <= float(row["temperature"]) <= 8.0  # SPACE's ranges
        assert 0.2 <= float(row["alpha"]) <= 0.6
        # An accuracy on the validation images: a whole number of them.
        correct = float(row["val_accuracy"]) * val_images
        assert correct == pytest.approx(round(correct), abs=1e-3)
        assert 0.0 <= float(row["val_accuracy"]) <= 1.0
        assert float(row["val_loss"]) > 0
        assert int(row["epochs"]) == 1
        assert float(row["seconds"]) > 0
    assert (folder / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((folder / "search.json").read_text())
    assert saved["tuner"] == "random" and saved["objective"] == "val_accuracy"


@pytest.mark.slow
def test_cached_teacher_logits_give_the_trials_of_an_uncached_search(
    finished_search, teacher_path, tiny_splits, tmp_path
):
    # finished_search replays trial 1's teacher logits in trial 2.
    hypermodel = finished_search.tuner.hypermodel
    assert hypermodel.cache_teacher_logits
    [(_, cache)] = hypermodel._train_caches.values()
    assert cache.cached_epochs == [0]
    uncached = search(tmp_path / "uncached", teacher_path, tiny_splits, cache_teacher_logits=False)
    assert not uncached.tuner.hypermodel._train_caches
    for cached_row, live_row in zip(finished_search.rows, uncached.rows):
        assert (cached_row["temperature"], cached_row["alpha"]) == (
            live_row["temperature"],
            live_row["alpha"],
        )
        assert cached_row["val_loss"] == pytest.approx(live_row["val_loss"], rel=1e-4)
        assert cached_row["val_accuracy"] == pytest.approx(live_row["val_accuracy"], abs=1e-6)


def test_best_json_is_the_trial_with_the_highest_val_accuracy(finished_search):
    rows = load_trials(finished_search.folder)
    best = load_best(finished_search.folder)
    highest = max(r["val_accuracy"] for r in rows)
    best_row = next(r for r in rows if r["trial_id"] == best["trial_id"])
    assert best["score"] == pytest.approx(highest)
    assert best_row["val_accuracy"] == pytest.approx(highest)
    assert (best["temperature"], best["alpha"]) == pytest.approx(
        (best_row["temperature"], best_row["alpha"])
    )
    # The oracle agrees on the score.
    oracle_best = finished_search.tuner.oracle.get_best_trials(1)[0]
    assert oracle_best.score == pytest.approx(highest)


def test_temperature_and_alpha_stay_in_the_configured_ranges(finished_search):
    for row in load_trials(finished_search.folder):
        assert 2.0 <= row["temperature"] <= 8.0
        assert 0.2 <= row["alpha"] <= 0.6
    for trial in finished_search.tuner.oracle.trials.values():
        values = trial.hyperparameters.values
        assert SPACE.contains(values["temperature"], values["alpha"])


def test_second_invocation_resumes_without_training(
    finished_search, teacher_path, tiny_splits, monkeypatch
):
    calls = []
    original_fit = DistillationHyperModel.fit

    def counting_fit(self, *args, **kwargs):
        calls.append(1)
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(DistillationHyperModel, "fit", counting_fit)
    before = (finished_search.folder / "trials.csv").read_text()
    again = search(finished_search.folder, teacher_path, tiny_splits)
    assert calls == []
    assert len(again.tuner.oracle.trials) == 2
    assert (finished_search.folder / "trials.csv").read_text() == before


def test_resume_with_other_settings_is_refused(finished_search, teacher_path, tiny_splits):
    other = SearchSpace(temperature_min=1.0, temperature_max=8.0, alpha_min=0.2, alpha_max=0.6)
    with pytest.raises(SearchError, match="temperature_min"):
        search(finished_search.folder, teacher_path, tiny_splits, space=other)
    with pytest.raises(SearchError, match="epochs"):
        search(finished_search.folder, teacher_path, tiny_splits, epochs=2)


def test_overwrite_refuses_a_folder_that_is_not_a_search(teacher_path, tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("do not delete")
    with pytest.raises(SearchError, match="holds no search"):
        run_search(teacher_path, None, folder, config=tiny_config(), overwrite=True)
    assert (folder / "thesis.tex").exists()


# --- Applying the best T and alpha to a run folder ---


def test_run_best_adds_a_tuned_row_matching_the_run_recipe(cifar10_archive, smoke_run, tmp_path):
    # A trained teacher: a run refuses a brought teacher that is near chance.
    teacher_path = smoke_run[0] / "models" / "teacher.keras"
    config = tiny_config(teacher=str(teacher_path), teacher_epochs=0, data=str(cifar10_archive))
    run_dir = tmp_path / "run"
    kd_keras.run_pipeline(config, run_dir)
    # A "search" whose best is the run's own T and alpha: the tuned stage
    # must then reproduce the run's distilled stage, which shows that it
    # uses the same student init, data order and recipe.
    search_dir = tmp_path / "search"
    search_dir.mkdir()
    (search_dir / "best.json").write_text(
        json.dumps(
            {
                "trial_id": "7",
                "temperature": config.temperature,
                "alpha": config.alpha,
                "score": 0.5,
            }
        )
    )
    row = run_best(search_dir, run_dir, verbose=0)
    distilled = json.loads((run_dir / "stages" / "student_distilled.json").read_text())
    assert row["stage"] == "student_distilled_tuned"
    assert row["search_trial_id"] == "7"
    for key in ("test_accuracy", "val_accuracy", "test_loss", "val_loss", "distiller_val_loss"):
        assert row[key] == pytest.approx(distilled[key], rel=1e-4, abs=1e-6), key
    results = json.loads((run_dir / "results.json").read_text())
    assert [r["stage"] for r in results["rows"]] == [
        "teacher",
        "student_baseline",
        "student_distilled",
        "student_distilled_tuned",
    ]
    assert results["gain_over_baseline_points"]["student_distilled_tuned"] == pytest.approx(
        results["gain_over_baseline_points"]["student_distilled"], abs=1e-4
    )
    assert read_csv(run_dir / "results.csv")[-1]["stage"] == "student_distilled_tuned"
    assert (run_dir / "models" / "student_distilled_tuned.keras").is_file()
    # Applying the same best again does not retrain.
    stage_file = run_dir / "stages" / "student_distilled_tuned.json"
    stamp = stage_file.stat().st_mtime_ns
    assert run_best(search_dir, run_dir, verbose=0) == row
    assert stage_file.stat().st_mtime_ns == stamp


def test_run_best_needs_a_search_and_a_run(tmp_path):
    with pytest.raises(SearchError, match="best.json"):
        run_best(tmp_path, tmp_path)
    (tmp_path / "best.json").write_text('{"temperature": 4, "alpha": 0.3}')
    with pytest.raises(RunFolderError, match="config.json"):
        run_best(tmp_path, tmp_path / "no-run")


# --- The command line ---


@pytest.fixture
def bad_teacher(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"this is not a zip file")
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--temperature-range", "5", "2"], "[5, 2]"),
        (["--temperature-range", "0", "4"], "got 0"),
        (["--alpha-range", "0.5", "1.5"], "1.5"),
        (["--alpha-range", "0.6", "0.6"], "[0.6, 0.6]"),
        (["--trials", "0"], "--trials must be >= 1, got 0"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--tuner", "hyperband", "--alpha-step", "2"], "alpha_step"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(extra, message, teacher_path, tmp_path, capsys):
    out = tmp_path / "search"
    code = main(
        [
            "--teacher",
            str(teacher_path),
            "--data",
            str(tmp_path / "none.tar.gz"),
            "--out",
            str(out),
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tuning: error: ") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()  # Nothing was started.


def test_cli_bad_teacher_file_exits_2(bad_teacher, tmp_path, capsys):
    code = main(
        [
            "--teacher",
            str(bad_teacher),
            "--data",
            str(tmp_path / "x.tar.gz"),
            "--out",
            str(tmp_path / "s"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "not a loadable Keras model" in err and str(bad_teacher) in err


def test_cli_missing_teacher_and_missing_data_exit_2(teacher_path, tmp_path, capsys):
    assert main(["--teacher", str(tmp_path / "none.keras"), "--out", str(tmp_path / "a")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "--teacher",
                str(teacher_path),
                "--data",
                str(tmp_path / "none.tar.gz"),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("tuning: error: CIFAR-10 at") and err.count("\n") == 1
    assert main(["--out", str(tmp_path / "c")]) == 2
    assert "--teacher is required" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_resumes_refuses_other_settings_and_overwrites(
    finished_search, cifar10_archive, teacher_path, tmp_path, capsys
):
    # A copy of the module's search, so that overwriting it harms no other
    # test; the flags give exactly the settings it was made with.
    folder = tmp_path / "search"
    shutil.copytree(finished_search.folder, folder)
    argv = [
        "--teacher",
        str(teacher_path),
        "--data",
        str(cifar10_archive),
        "--out",
        str(folder),
        "--preset",
        "smoke",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--student-depth",
        "8",
        "--student-width",
        "4",
        "--train-per-class",
        "10",
        "--val-per-class",
        "5",
        "--batch-size",
        "50",
        "--temperature-range",
        "2",
        "8",
        "--alpha-range",
        "0.2",
        "0.6",
        "--quiet",
    ]
    before = (folder / "trials.csv").read_text()
    assert main(argv) == 0  # Resumes: both trials are done, none is trained.
    out = capsys.readouterr().out
    assert "trial 0: T=" not in out and "2 of 2 trials completed" in out
    assert f"best: T={load_best(folder)['temperature']:.4g}" in out
    assert (folder / "trials.csv").read_text() == before

    changed = list(argv)
    changed[changed.index("--temperature-range") + 2] = "9"
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert err.startswith("tuning: error: cannot resume") and "temperature_max" in err

    # --overwrite starts over: the old trials' files go.
    changed[changed.index("--trials") + 1] = "1"
    assert main(changed + ["--overwrite"]) == 0
    assert "trial 0: T=" in capsys.readouterr().out
    assert not (folder / "trial_1").exists()
    rows = load_trials(folder)
    assert len(rows) == 1 and 2.0 <= rows[0]["temperature"] <= 9.0
    saved = json.loads((folder / "search.json").read_text())
    assert saved["space"]["temperature_max"] == 9.0


def test_cli_names_a_damaged_search_file_in_one_line(tmp_path, capsys):
    from tuning.cli import main as tuning_main

    teacher = tmp_path / "t.keras"
    kd_keras.build_resnet(8, width=4).save(teacher)
    search = tmp_path / "s"
    search.mkdir()
    (search / "search.json").write_text('{"tuner": ')
    code = tuning_main(
        [
            "--teacher",
            str(teacher),
            "--out",
            str(search),
            "--preset",
            "smoke",
            "--trials",
            "1",
            "--epochs",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"tuning: error: '{search / 'search.json'}' is damaged (not valid JSON")
    assert (search / "search.json").read_text() == '{"tuner": '  # Left as it was.
