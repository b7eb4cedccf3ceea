"""The search on the user's own data: classes, image size and split sizes
come from the data (or the --apply-to run), not from CIFAR-10. And a search
whose trials fail: a diverging loss is a FAILED trial with the run's hint,
no best is chosen from failed trials, every JSON written is strict, and the
epochs and trials have caps.

Tiny generated data (3 classes, 20x20 images in a `.npz` file), tiny models,
one epoch."""

import csv
import json
import math

import keras
import numpy as np
import pytest
from conftest import tiny_config

from kd_keras.errors import SearchFailedError
from kd_keras.search_folder import MAX_TRIALS
from kd_keras.validation import MAX_EPOCHS
from tuning.cli import _config_from_args, get_args, main
from tuning.hypermodel import SearchSpace
from tuning.report import best_row, write_strict_json
from tuning.tuners import check_failures

TINY = dict(batch_size=30, threads=1)  # Beside conftest's TINY_RUN.


def three_class_npz(path, n=150, size=20):
    """3 classes, 20x20 RGB; class c brighter in channel c."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = rng.integers(0, 120, size=(n, size, size, 3), dtype=np.uint8)
    for c in range(3):
        x[y == c, :, :, c] += np.uint8(100)
    np.savez(
        path,
        x_train=x[:120],
        y_train=y[:120],
        x_test=x[120:],
        y_test=y[120:],
        class_names=np.array(["cat", "dog", "emu"]),
    )
    return path


def tiny_run_config(**fields):
    return tiny_config(**{**TINY, **fields})


@pytest.fixture
def npz(tmp_path):
    return three_class_npz(tmp_path / "three.npz")


def test_split_sizes_are_checked_against_the_data_not_cifar(npz, tmp_path, capsys):
    # 30 validation images of 3 classes: 10 a class. As if CIFAR-10 (10
    # classes), 10 a class was refused ("at most 3").
    argv = ["--data", str(npz), "--out", str(tmp_path / "s"), "--preset", "smoke"]
    argv += ["--train-per-class", "20"]
    config = _config_from_args(get_args(argv + ["--val-size", "30", "--val-per-class", "10"]))
    assert config.data == str(npz) and config.val_per_class == 10
    # 11 is more than the data has: refused in one line, before any trial.
    teacher = tmp_path / "t.keras"
    keras.Sequential(
        [keras.Input((20, 20, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    ).save(teacher)
    code = main(
        argv + ["--teacher", str(teacher), "--val-size", "30", "--val-per-class", "11", "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--val-per-class 11 > the 10 validation images" in err and "at most 10" in err
    assert not (tmp_path / "s" / "trials.csv").exists()


def test_apply_to_a_run_on_own_data_uses_its_classes_and_image_size(npz, tmp_path, capsys):
    from kd_keras.train.pipeline import run_pipeline

    run = tmp_path / "run"
    # image_size 16: the run resizes the 20x20 images; so must the search.
    run_pipeline(tiny_run_config(data=str(npz), val_size=30, image_size=16), run)
    search = tmp_path / "search"
    argv = ["--apply-to", str(run), "--out", str(search), "--trials", "1", "--epochs", "1"]
    assert main(argv + ["--quiet", "--val-per-class", "10"]) == 0
    out = capsys.readouterr().out
    assert "search data: 3 classes, 16x16x3 images: 90 training, 30 validation" in out
    saved = json.loads((search / "search.json").read_text())
    assert saved["data"] == {
        "classes": ["cat", "dog", "emu"],
        "image_shape": [16, 16, 3],
        "train_images": 90,
        "val_images": 30,
    }
    results = json.loads((run / "results.json").read_text())
    assert results["rows"][-1]["stage"] == "student_distilled_tuned"
    tuned = keras.saving.load_model(run / "models" / "student_distilled_tuned.keras")
    assert tuple(tuned.input_shape) == (None, 16, 16, 3) and tuned.output_shape == (None, 3)
    # Resuming on other data (here: fewer validation images) is refused.
    code = main(argv + ["--quiet", "--val-per-class", "9"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot resume" in err
    assert "data.val_images (saved 30, asked 27)" in err


# --- Failed trials, strict JSON, caps ---


def row(trial_id, status, score=None, error=None):
    return {
        "trial_id": str(trial_id),
        "temperature": 4.0,
        "alpha": 0.5,
        "val_accuracy": score,
        "val_loss": None,
        "epochs": 1,
        "status": status,
        "error": error,
    }


def test_no_best_is_chosen_from_failed_or_non_finite_trials():
    rows = [
        row(0, "FAILED", error="the loss is nan"),
        row(1, "COMPLETED", 0.40),
        row(2, "COMPLETED", float("nan")),
        row(3, "INVALID"),
    ]
    best = best_row(rows)
    assert best["trial_id"] == "1" and best["score"] == 0.40 and best["completed_trials"] == 1
    assert best_row([row(0, "FAILED"), row(1, "COMPLETED", float("nan"))]) is None


def test_strict_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_strict_json(tmp_path / "best.json", {"score": float("nan")})
    assert not (tmp_path / "best.json").exists()
    write_strict_json(tmp_path / "best.json", {"score": 0.5})
    assert json.loads((tmp_path / "best.json").read_text()) == {"score": 0.5}


def test_the_search_stops_after_three_failed_trials_in_a_row():
    failed = [row(i, "FAILED", error="the loss is nan.") for i in range(1, 4)]
    check_failures([row(0, "COMPLETED", 0.5)] + failed[:2])  # Two: goes on.
    check_failures(failed[:2] + [row(3, "COMPLETED", 0.5)])  # Broken by a completed one.
    with pytest.raises(SearchFailedError) as error:
        check_failures([row(0, "COMPLETED", 0.5)] + failed)
    message = str(error.value)
    assert "the last 3 trials failed" in message and "trial 3: the loss is nan)" in message
    assert "--overwrite" in message and "\n" not in message


@pytest.mark.parametrize(
    "flag, value, message",
    [
        (
            "--trials",
            MAX_TRIALS + 1,
            f"--trials must be at most {MAX_TRIALS}, got {MAX_TRIALS + 1}",
        ),
        (
            "--epochs",
            MAX_EPOCHS + 1,
            f"--epochs must be at most {MAX_EPOCHS}, got {MAX_EPOCHS + 1}",
        ),
        ("--trials", 10**9, f"--trials must be at most {MAX_TRIALS}, got 1000000000"),
    ],
)
def test_trials_and_epochs_have_the_runs_caps(flag, value, message, tmp_path, capsys):
    out = tmp_path / "search"
    code = main(["--teacher", str(tmp_path / "t.keras"), "--out", str(out), flag, str(value)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not out.exists()


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def tiny_search(tmp_path, *flags):
    """The argv of a search on `three_class_npz` with an untrained teacher,
    tiny students and `flags`, and its search folder."""
    data = three_class_npz(tmp_path / "three.npz")
    teacher = tmp_path / "t.keras"
    keras.Sequential(
        [keras.Input((20, 20, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    ).save(teacher)
    out = tmp_path / "search"
    argv = ["--teacher", str(teacher), "--data", str(data), "--out", str(out)]
    argv += ["--preset", "smoke", "--val-size", "30", "--train-per-class", "20"]
    argv += ["--val-per-class", "10", "--student-depth", "8", "--student-width", "4"]
    argv += ["--batch-size", "30", *flags]
    return argv, out


def test_a_diverging_search_fails_its_trials_and_exits_1(tmp_path, capsys):
    argv, out = tiny_search(
        tmp_path, "--trials", "2", "--epochs", "1", "--quiet", "--learning-rate", "1e300"
    )
    assert main(argv) == 1
    captured = capsys.readouterr()
    # (Before it, a warning that the untrained teacher is near chance.)
    [error] = [line for line in captured.err.splitlines() if line.startswith("tuning:")]
    assert error.startswith("tuning: error: no trial completed (trial 1: ")
    assert "the loss is" in error and "--learning-rate" in error
    assert "Traceback" not in captured.err + captured.out
    assert captured.out.count("FAILED: ") == 2
    rows = list(csv_rows(out / "trials.csv"))
    assert [r["status"] for r in rows] == ["FAILED", "FAILED"]
    assert all(r["val_accuracy"] == "" for r in rows)
    assert not (out / "best.json").exists()
    written = sorted(out.rglob("*.json"))
    assert out / "search.json" in written and out / "trial_0" / "kd_trial.json" in written
    for path in written:
        strict_json(path)
    recorded = strict_json(out / "trial_1" / "kd_trial.json")
    assert "the loss is" in recorded["error"] and "--learning-rate" in recorded["error"]
    assert not math.isnan(recorded["seconds"])


def csv_rows(path):
    with open(path, newline="") as file:
        yield from csv.DictReader(file)


def test_the_best_trial_carries_its_binomial_noise():
    rows = [row(0, "COMPLETED", 0.80), row(1, "COMPLETED", 0.70), row(2, "FAILED")]
    best = best_row(rows, val_images=400)
    assert best["score_se"] == pytest.approx(math.sqrt(0.8 * 0.2 / 400))  # 0.02
    margin_se = math.hypot(math.sqrt(0.8 * 0.2 / 400), math.sqrt(0.7 * 0.3 / 400))
    assert best["margin_se"] == pytest.approx(margin_se)  # 0.0304: 0.10 > 2 x 0.0304
    assert best["runner_up_score"] == 0.70 and best["beats_runner_up"] is True
    # On 30 images the same margin is within the noise.
    assert best_row(rows, val_images=30)["beats_runner_up"] is False
    assert "score_se" not in best_row(rows)
    assert best_row(rows, val_images=400)["ci95"] == pytest.approx([0.8 - 0.0392, 0.8 + 0.0392])


def test_a_trial_of_several_seeds_adds_their_spread_to_its_noise():
    best = dict(row(0, "COMPLETED", 0.80), seed_scores=[0.78, 0.80, 0.82], seed_sd=0.02)
    default = dict(row(1, "COMPLETED", 0.70), seed_scores=[0.69, 0.70, 0.71], seed_sd=0.01)
    found = best_row([best, default], val_images=400)
    split = math.sqrt(0.8 * 0.2 / 400)  # 0.02, shared by the seeds: not divided by 3.
    se = math.sqrt(split**2 + 0.02**2 / 3)
    assert found["split_se"] == pytest.approx(split)
    assert found["score_se"] == pytest.approx(se)
    assert found["ci95"] == pytest.approx([0.8 - 1.96 * se, 0.8 + 1.96 * se])
    assert found["seed_scores"] == [0.78, 0.80, 0.82] and found["seed_sd"] == 0.02
    other = math.sqrt(0.7 * 0.3 / 400 + 0.01**2 / 3)
    assert found["margin_se"] == pytest.approx(math.hypot(se, other))
    # A wide seed spread makes the same margin noise.
    best["seed_sd"] = default["seed_sd"] = 0.12
    assert best_row([best, default], val_images=400)["beats_runner_up"] is False


def test_trial_seeds_start_each_execution_from_its_seeds_student(tmp_path):
    import keras_tuner

    from tuning.hypermodel import DistillationHyperModel, SearchSpace
    from tuning.tuners import build_tuner

    teacher = keras.Sequential(
        [keras.Input((20, 20, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    )
    config = tiny_run_config(precision="float32", teacher_precision="float32")
    hypermodel = DistillationHyperModel(
        teacher, steps_per_epoch=2, epochs=1, config=config, space=SearchSpace(), trial_seeds=2
    )
    hp = keras_tuner.HyperParameters()
    first, second, third = (hypermodel.build(hp).student.get_weights()[0] for _ in range(3))
    assert not np.array_equal(first, second)  # Execution 2: seed + 1's student.
    assert np.array_equal(first, third)  # The next trial's first execution: seed 0's.
    # Seed 0's student is the one-seed search's (the pipeline's) student.
    one = DistillationHyperModel(teacher, steps_per_epoch=2, epochs=1, config=config)
    assert np.array_equal(one.build(keras_tuner.HyperParameters()).student.get_weights()[0], first)
    tuner = build_tuner("random", hypermodel, tmp_path / "s", max_trials=1, epochs=1)
    assert tuner.executions_per_trial == 2
    with pytest.raises(ValueError, match="trial_seeds must be an int >= 1, got 0"):
        DistillationHyperModel(teacher, steps_per_epoch=2, config=config, trial_seeds=0)


def test_the_best_is_compared_with_the_default_trial():
    rows = [row(0, "COMPLETED", 0.70), row(1, "COMPLETED", 0.80), row(2, "COMPLETED", 0.79)]
    rows[0].update(temperature=4.0, alpha=0.3)
    rows[1].update(temperature=7.5, alpha=0.2)
    best = best_row(rows, val_images=400, default={"temperature": 4.0, "alpha": 0.3})
    assert best["trial_id"] == "1" and best["default_trial_id"] == "0"
    assert best["default_score"] == 0.70 and best["beats_default"] is True
    assert best["runner_up_trial_id"] == "2" and best["beats_runner_up"] is False
    # The default is the first trial of a new random search.
    space = SearchSpace(temperature_min=2.0, temperature_max=8.0, alpha_min=0.2, alpha_max=0.6)
    assert space.default_values(4.0, 0.3) == {"temperature": 4.0, "alpha": 0.3}
    assert space.default_values(9.0, 0.3) is None  # Outside the space: no default trial.
    assert SearchSpace(fixed_alpha=0.5).default_values(4.0, 0.3) == {
        "temperature": 4.0,
        "alpha": 0.5,
    }


def test_a_search_of_two_seeds_a_trial_records_each_seeds_score(tmp_path, capsys):
    argv, out = tiny_search(tmp_path, "--trials", "2", "--epochs", "2", "--trial-seeds", "2")
    assert main(argv + ["--quiet"]) == 0
    for trial in ("0", "1"):
        seeds = strict_json(out / f"trial_{trial}" / "kd_trial.json")["seed_scores"]
        assert len(seeds) == 2 and all(0 <= s <= 1 for s in seeds)
        # keras-tuner's score is the mean of the seeds' best epochs.
        row = next(r for r in csv_rows(out / "trials.csv") if r["trial_id"] == trial)
        assert float(row["val_accuracy"]) == pytest.approx(np.mean(seeds))
        assert float(row["seed_sd"]) == pytest.approx(np.std(seeds, ddof=1))
    best = strict_json(out / "best.json")
    assert best["score_se"] >= best["split_se"] > 0
    low, high = best["ci95"]
    assert low < best["score"] < high
    assert "and 2 seeds (their sd" in capsys.readouterr().out


def test_a_filled_teacher_cache_is_replayed_by_another_processes_trials(tmp_path):
    # The chief of a --workers search fills the cache; a worker's trials,
    # made after whatever random calls its own start-up did, replay it.
    import keras_tuner

    from kd_keras import make_dataset
    from tuning.hypermodel import DistillationHyperModel

    teacher = keras.Sequential(
        [keras.Input((20, 20, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    )
    config = tiny_run_config(precision="float32", teacher_precision="float32")
    x = np.random.default_rng(0).integers(0, 256, (60, 20, 20, 3), dtype=np.uint8)
    y = (np.arange(60) % 3).astype("int32")

    def train_data(epochs, start_epoch):
        return make_dataset(
            x,
            y,
            batch_size=config.batch_size,
            training=True,
            seed=config.seed,
            epochs=epochs,
            start_epoch=start_epoch,
        )

    steps = -(-60 // config.batch_size)
    options = dict(steps_per_epoch=steps, epochs=2, config=config, cache_folder=tmp_path)
    DistillationHyperModel(teacher, **options).fill_teacher_cache(train_data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0.npz", "epoch_1.npz"]
    keras.utils.set_random_seed(99)
    worker = DistillationHyperModel(teacher, **options)
    cache = worker._teacher_cache(train_data)
    calls, forward = [], cache._teacher_logits
    cache._teacher_logits = lambda images: calls.append(len(images)) or forward(images)
    hp = keras_tuner.HyperParameters()
    worker.fit(hp, worker.build(hp), train_data, epochs=2, verbose=0)
    # Each epoch's first batch checked against the teacher; nothing recomputed.
    assert calls == [min(config.batch_size, 60)] * 2
