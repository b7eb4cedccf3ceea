"""Tests of SavedModel / LiteRT export (`kd_keras.export`: exporter, convert, evaluate, spec).

The real tests (marked slow: a smoke run, then a dozen conversions) export a
copy of the session's smoke run (conftest's `smoke_run`), so the shared run
folder keeps its three rows.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kd_keras.errors import ExportError
from kd_keras.export.plan import plan_exports, validate_options
from kd_keras.export.spec import (
    EXPORT_COLUMNS,
    VARIANTS,
    ExportSpec,
    export_specs,
    file_sha256,
    read_export_rows,
    row_name,
    split_row_name,
)

REPO = Path(__file__).resolve().parents[1]
EVAL_IMAGES = 100  # Of the smoke run's 200 test images.
FLOAT_VARIANTS = ("saved_model", "float32", "float16")


# --------------------------------------------------------------------------
# Requests, names and run-folder checks (no Keras)
# --------------------------------------------------------------------------


def test_specs_cover_every_pair_in_variant_order():
    specs = export_specs(["litert", "saved_model"], "none,float16, dynamic", ["float32"])
    assert [s.variant for s in specs] == ["saved_model", "float32", "float16", "dynamic"]
    specs = export_specs("litert", ["int8"], ["int8", "float32"])
    assert [(s.variant, s.io, s.filename) for s in specs] == [
        ("int8", "float32", "int8.tflite"),
        ("int8_io", "int8", "int8_io.tflite"),
    ]
    # Defaults: full-integer LiteRT; a SavedModel alone is float.
    assert [s.variant for s in export_specs("litert")] == ["int8"]
    assert [s.variant for s in export_specs("saved_model")] == ["saved_model"]
    assert export_specs(["saved_model", "litert"], ["int8"])[0].describe() == "SavedModel float32"


@pytest.mark.parametrize(
    "formats, quantizations, io, fragment",
    [
        (["onnx"], None, ["float32"], "unknown format 'onnx'; choose one of saved_model, litert"),
        (["litert"], ["int4"], ["float32"], "unknown quantisation 'int4'; choose one of none,"),
        (["litert"], ["int8"], ["uint8"], "unknown io type 'uint8'; choose one of float32, int8"),
        (["saved_model"], ["int8"], ["float32"], "a SavedModel is not quantised (asked: int8)"),
        (["litert"], ["dynamic"], ["int8"], "int8 inputs and outputs need a full-integer model"),
        ([], None, ["float32"], "no format to export"),
    ],
)
def test_bad_requests_name_the_value_and_the_fix(formats, quantizations, io, fragment):
    with pytest.raises(ExportError) as info:
        export_specs(formats, quantizations, io)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_spec_make_validates_each_keyword():
    assert ExportSpec.make("litert", "int8", "int8").variant == "int8_io"
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        ExportSpec.make("tflite")
    with pytest.raises(ExportError, match="a SavedModel is not quantised .*format='litert'"):
        ExportSpec.make("saved_model", "float16")
    with pytest.raises(ExportError, match="need full-integer quantisation .*quantize='int8'"):
        ExportSpec.make("litert", "none", "int8")


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"calibration_images": 0}, "calibration_images must be an int >= 1, got 0"),
        ({"max_images": -5}, "max_images must be an int >= 1 or None, got -5"),
        ({"latency_repeats": 2.5}, "latency_repeats must be an int >= 1, got 2.5"),
        ({"threads": True}, "threads must be an int >= 1 or None, got True"),
        ({"seed": -1}, "seed must be an int >= 0 or None, got -1"),
    ],
)
def test_bad_numbers_are_refused(options, fragment):
    with pytest.raises(ExportError) as info:
        validate_options(**options)
    assert fragment in str(info.value)


def test_row_names_round_trip():
    assert row_name("student_distilled", "int8") == "student_distilled@int8"
    assert split_row_name("student_distilled@int8_io") == ("student_distilled", "int8_io")
    assert split_row_name("teacher") == ("teacher", None)


def fake_run(folder, finished=("teacher",)):
    """A run folder with config.json and the given stages finished (fake model files)."""
    (folder / "stages").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "config.json").write_text(json.dumps({"preset": "smoke"}))
    for stage in finished:
        (folder / "stages" / f"{stage}.json").write_text(json.dumps({"stage": stage}))
        (folder / "models" / f"{stage}.keras").write_bytes(f"model of {stage}".encode())
    return folder


def test_plan_refuses_unknown_and_unfinished_stages(tmp_path):
    run = fake_run(tmp_path / "run")
    specs = export_specs("litert", "int8")
    with pytest.raises(
        ExportError,
        match=r"stage 'studnet' is not in run .*; its stages are "
        "teacher, student_baseline, student_distilled",
    ):
        plan_exports(run, ["studnet"], specs)
    with pytest.raises(ExportError) as info:
        plan_exports(run, ["student_distilled"], specs)
    assert "has not finished stage 'student_distilled' (no stages/student_distilled.json)" in str(
        info.value
    )
    assert f"python -m kd_keras run --resume --out {run}" in str(info.value)
    with pytest.raises(ExportError, match="is not a kd_keras run folder"):
        plan_exports(tmp_path / "nowhere", ["teacher"], specs)
    assert plan_exports(run, ["teacher"], specs) == [("teacher", specs[0])]
    assert not (run / "export").exists()  # Planning writes nothing.


def _complete(run, stage, variant, source=None):
    """A variant as a finished export leaves it: its file, then its row."""
    target = run / "export" / stage / f"{variant}.tflite"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"shipped " + variant.encode())
    row = {
        "stage": row_name(stage, variant),
        "file": f"export/{stage}/{variant}.tflite",
        "size_bytes": target.stat().st_size,
        "source_sha256": source or file_sha256(run / "models" / f"{stage}.keras"),
    }
    (target.parent / f"{variant}.json").write_text(json.dumps(row))
    return target


def test_plan_skips_complete_exports_redoes_partial_ones_refuses_stale_ones(tmp_path):
    from kd_keras.export.plan import export_status

    run = fake_run(tmp_path / "run")
    specs = export_specs("litert", ["none", "float16", "dynamic", "int8"])
    by_variant = {spec.variant: spec for spec in specs}
    _complete(run, "teacher", "float32")
    # A kill after the file, before its row: partial.
    (run / "export" / "teacher" / "float16.tflite").write_bytes(b"whole file, no row")
    # A row whose file is shorter than recorded: partial.
    _complete(run, "teacher", "dynamic").write_bytes(b"torn")
    statuses = {v: export_status(run, "teacher", s) for v, s in by_variant.items()}
    assert statuses == {
        "float32": "complete",
        "float16": "partial",
        "dynamic": "partial",
        "int8": "absent",
    }
    plan = plan_exports(run, ["teacher"], specs)
    assert [s.variant for _, s in plan] == ["float16", "dynamic", "int8"]
    assert [s.variant for _, s in plan.skipped] == ["float32"]
    assert [s.variant for _, s in plan.requested] == ["float32", "float16", "dynamic", "int8"]
    assert len(plan_exports(run, ["teacher"], specs, overwrite=True)) == 4
    # Exported from an older model of the stage: only --overwrite replaces it.
    _complete(run, "teacher", "int8", source="0" * 64)
    with pytest.raises(ExportError) as info:
        plan_exports(run, ["teacher"], specs)
    message = str(info.value)
    assert "export/teacher/int8.tflite already exists" in message and "--overwrite" in message
    assert "older model" in message and "float16" not in message
    assert (run / "export" / "teacher" / "int8.tflite").read_bytes() == b"shipped int8"


def test_rows_of_changed_models_or_missing_files_are_left_out(tmp_path):
    run = fake_run(tmp_path / "run", finished=("teacher", "student_distilled"))
    for stage in ("student_distilled", "teacher"):
        folder = run / "export" / stage
        folder.mkdir(parents=True)
        for variant in ("int8", "float32"):
            (folder / f"{variant}.tflite").write_bytes(b"x")
            (folder / f"{variant}.json").write_text(
                json.dumps(
                    {
                        "stage": row_name(stage, variant),
                        "file": f"export/{stage}/{variant}.tflite",
                        "source_sha256": file_sha256(run / "models" / f"{stage}.keras"),
                    }
                )
            )
    names = [r["stage"] for r in read_export_rows(run)]
    assert names == [
        "teacher@float32",
        "teacher@int8",
        "student_distilled@float32",
        "student_distilled@int8",
    ]
    # The student is trained again: its exports are out of date.
    (run / "models" / "student_distilled.keras").write_bytes(b"retrained")
    (run / "export" / "teacher" / "float32.tflite").unlink()
    assert [r["stage"] for r in read_export_rows(run)] == ["teacher@int8"]


def test_export_spec_and_kd_keras_names_do_not_start_tensorflow():
    code = (
        "import sys, kd_keras, kd_keras.export.spec\n"
        "assert 'export_model' in kd_keras.__all__ and 'export_run' in kd_keras.__all__\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'})\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --------------------------------------------------------------------------
# Real exports of the smoke run
# --------------------------------------------------------------------------


def copy_run(smoke_run, folder):
    shutil.copytree(smoke_run[0], folder)
    return folder


@pytest.fixture(scope="module")
def exported_run(smoke_run, tmp_path_factory):
    """A copy of the smoke run with every variant of the distilled student
    exported and evaluated on its first `EVAL_IMAGES` test images."""
    from kd_keras.export.exporter import export_run

    run = copy_run(smoke_run, tmp_path_factory.mktemp("export") / "run")
    rows = export_run(
        run,
        formats=["saved_model", "litert"],
        quantizations=["none", "float16", "dynamic", "int8"],
        io=["float32", "int8"],
        calibration_images=64,
        max_images=EVAL_IMAGES,
        latency_repeats=10,
    )
    return run, {split_row_name(r["stage"])[1]: r for r in rows}


@pytest.fixture(scope="module")
def test_split(exported_run):
    """The images the exports were evaluated on, and the Keras model."""
    import keras

    from kd_keras import RunConfig, prepare_splits

    run, _ = exported_run
    config = RunConfig.load(run / "config.json")
    images, labels = prepare_splits(
        config.data,
        val_size=config.val_size,
        train_per_class=config.train_per_class,
        val_per_class=config.val_per_class,
        test_per_class=config.test_per_class,
        seed=config.seed,
    )["test"]
    model = keras.saving.load_model(run / "models" / "student_distilled.keras")
    return images[:EVAL_IMAGES].astype("float32"), labels[:EVAL_IMAGES], model


@pytest.mark.slow
def test_every_variant_exports_reloads_and_agrees_with_keras(exported_run, test_split):
    from kd_keras.export.evaluate import evaluate_litert, evaluate_saved_model

    run, rows = exported_run
    images, labels, model = test_split
    keras_top1 = model.predict(images, verbose=0).argmax(axis=1)
    assert list(rows) == list(VARIANTS)
    for variant, row in rows.items():
        path = run / row["file"]
        assert path.exists(), variant
        # Reload in a fresh interpreter (one image a call) or TensorFlow.
        if row["format"] == "litert":
            again = evaluate_litert(path, (images, labels), batch_size=1, latency_repeats=3)
        else:
            again = evaluate_saved_model(path, (images, labels), latency_repeats=3)
        assert again["images"] == row["test_images"] == EVAL_IMAGES
        assert again["accuracy"] == pytest.approx(row["test_accuracy"]), variant
        assert np.mean(again["predictions"] == labels) == pytest.approx(row["test_accuracy"])
        agreement = float(np.mean(again["predictions"] == keras_top1))
        assert agreement == pytest.approx(row["agreement"]), variant
        # Float exports compute what the (bfloat16) Keras model computes up
        # to round-off; quantised ones still agree on most images.
        assert agreement >= (0.95 if variant in FLOAT_VARIANTS else 0.8), (variant, agreement)
        assert abs(row["accuracy_delta_points"]) <= (2 if variant in FLOAT_VARIANTS else 6)
        assert row["keras_test_accuracy"] == pytest.approx(np.mean(keras_top1 == labels))
        assert row["latency_ms"] > 0 and row["keras_latency_ms"] > 0
        assert row["threads"] == (1 if row["format"] == "litert" else None)
        assert row["speedup"] == pytest.approx(
            row["keras_latency_ms"] / row["latency_ms"], rel=2e-3
        )


@pytest.mark.slow
def test_quantised_files_are_smaller(exported_run):
    run, rows = exported_run
    keras_size = (run / "models" / "student_distilled.keras").stat().st_size
    sizes = {v: r["size_bytes"] for v, r in rows.items()}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    assert sizes["dynamic"] < sizes["float16"]
    assert sizes["int8_io"] <= sizes["int8"]
    assert sizes["int8"] == (run / rows["int8"]["file"]).stat().st_size
    assert rows["int8"]["size_ratio"] == pytest.approx(sizes["int8"] / keras_size, abs=1e-4)
    assert rows["int8"]["size_ratio"] < 0.3


@pytest.mark.slow
def test_int8_io_file_takes_quantised_pixels(exported_run, test_split):
    from ai_edge_litert.interpreter import Interpreter

    from kd_keras.export.evaluate import evaluate_litert

    run, rows = exported_run
    images, labels, _ = test_split
    row = rows["int8_io"]
    assert row["input"] == {
        "dtype": "int8",
        "quantization": {"scale": pytest.approx(1.0, abs=0.01), "zero_point": -128},
    }
    assert row["output"]["dtype"] == "int8" and row["output"]["quantization"]["scale"] > 0
    assert rows["int8"]["input"] == {"dtype": "float32", "quantization": None}
    assert row["calibration_images"] == 64 and row["calibration_seed"] == 0
    # By hand: int8 pixels are pixel - 128; logits are (q - zero_point) * scale.
    interpreter = Interpreter(model_path=str(run / row["file"]))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    top1 = []
    for image in images[:20]:
        interpreter.set_tensor(inp["index"], (image[None] - 128).astype(np.int8))
        interpreter.invoke()
        top1.append(int(interpreter.get_tensor(out["index"])[0].argmax()))
    result = evaluate_litert(run / row["file"], (images[:20], labels[:20]), latency_repeats=2)
    assert top1 == list(result["predictions"])
    # The float-io int8 file computes the same integers inside.
    same = evaluate_litert(
        run / rows["int8"]["file"], (images[:20], labels[:20]), latency_repeats=2
    )
    assert list(same["predictions"]) == top1


@pytest.mark.slow
def test_rows_land_in_results_csv_json_and_chart(exported_run):
    from kd_keras.report.gains import gains_over_baseline
    from kd_keras.report.plots import bar_entries
    from kd_keras.report.results import format_export_table, format_table
    from kd_keras.run_folder import read_results_csv
    from kd_keras.stages import STAGE_COLORS

    run, rows = exported_run
    names = ["teacher", "student_baseline", "student_distilled"] + [
        f"student_distilled@{v}" for v in VARIANTS
    ]
    csv_rows = read_results_csv(run / "results.csv")
    assert [r["stage"] for r in csv_rows] == names
    assert set(EXPORT_COLUMNS) <= set(csv_rows[0])
    by_stage = {r["stage"]: r for r in csv_rows}
    assert by_stage["student_distilled@int8"]["test_accuracy"] == pytest.approx(
        rows["int8"]["test_accuracy"]
    )
    assert by_stage["student_distilled@int8"]["io"] == "float32"
    assert by_stage["student_distilled@int8_io"]["io"] == "int8"
    saved = json.loads((run / "results.json").read_text())
    assert [r["stage"] for r in saved["rows"]] == names
    assert set(saved["gain_over_baseline_points"]) == {"student_distilled"}
    assert saved["teacher_vs_student"][0]["variant"] == "keras"
    assert set(gains_over_baseline(saved["rows"])) == {"student_distilled"}
    entries = {e["label"]: e for e in bar_entries(saved["rows"])}
    shipped = entries["student_distilled@int8"]
    assert shipped["hatch"] and shipped["color"] == STAGE_COLORS["student_distilled"]
    assert shipped["value"] == pytest.approx(100 * rows["int8"]["test_accuracy"])
    assert f"{rows['int8']['size_bytes'] / 1024:.0f} KB" in shipped["note"]
    chart = run / "test_accuracy_bar.png"
    assert chart.stat().st_mtime >= (run / rows["int8_io"]["file"]).stat().st_mtime
    table = format_table(saved["rows"])
    assert "student_distilled@int8_io" in table
    export_table = format_export_table(saved["rows"])
    assert "student_distilled@int8" in export_table and "teacher  " not in export_table


@pytest.mark.slow
def test_existing_exports_are_skipped_unless_overwrite(exported_run):
    from kd_keras.export.exporter import export_run

    run, rows = exported_run
    target = run / rows["int8"]["file"]
    before = target.read_bytes()
    row_file = run / "export" / "student_distilled" / "int8.json"
    row_before = row_file.read_text()
    lines = []
    skipped = export_run(
        run, quantizations=["int8"], max_images=10, latency_repeats=2, log=lines.append
    )
    assert [r["stage"] for r in skipped] == ["student_distilled@int8"]
    assert lines == [
        "student_distilled@int8: already exported, skipped (--overwrite exports it again)"
    ]
    assert target.read_bytes() == before and row_file.read_text() == row_before
    new = export_run(
        run,
        quantizations=["int8"],
        calibration_images=64,
        max_images=EVAL_IMAGES,
        latency_repeats=2,
        overwrite=True,
    )
    assert [r["stage"] for r in new] == ["student_distilled@int8"]
    assert json.loads(row_file.read_text())["latency_repeats"] == 2
    # Same calibration sample, same converter: the same file again.
    assert target.read_bytes() == before
    leftovers = [p.name for p in (run / "export").rglob(".*")]
    assert not leftovers, leftovers


# --------------------------------------------------------------------------
# export_model on its own
# --------------------------------------------------------------------------


def test_export_model_refuses_bad_arguments(tmp_path):
    from kd_keras import build_resnet, export_model

    model = build_resnet(8, width=2)
    with pytest.raises(ExportError, match="unknown format 'onnx'"):
        export_model(model, tmp_path / "m.onnx", format="onnx")
    with pytest.raises(ExportError, match="must end in '.tflite', got"):
        export_model(model, tmp_path / "m.lite")
    with pytest.raises(ExportError, match="needs representative_images"):
        export_model(model, tmp_path / "m.tflite", quantize="int8")
    (tmp_path / "m.tflite").write_bytes(b"keep me")
    with pytest.raises(ExportError, match="already exists; pass overwrite=True"):
        export_model(model, tmp_path / "m.tflite")
    assert (tmp_path / "m.tflite").read_bytes() == b"keep me"


def test_a_model_the_converter_cannot_handle_gives_a_short_error(tmp_path):
    import keras
    import tensorflow as tf

    from kd_keras import export_model

    class MatrixInverse(keras.layers.Layer):
        def call(self, x):
            return tf.linalg.inv(x)

    inputs = keras.Input((4, 4))
    model = keras.Model(inputs, keras.layers.Flatten()(MatrixInverse()(inputs)), name="inverter")
    with pytest.raises(ExportError) as info:
        export_model(model, tmp_path / "inverter.tflite")
    message = str(info.value)
    assert message.startswith("the LiteRT converter cannot convert model 'inverter' to float32")
    assert "ops with no LiteRT built-in kernel: MatrixInverse" in message
    assert "build the model from stock Keras layers" in message
    assert "\n" not in message and len(message) < 400
    assert list(tmp_path.iterdir()) == []  # No file, no temporary left behind.


def test_export_model_round_trip_on_a_tiny_model(tmp_path):
    """export_model + evaluate_litert on a model built here: the float32
    file reproduces the Keras logits' top-1."""
    import keras

    from kd_keras import build_resnet, export_model
    from kd_keras.export.evaluate import evaluate_litert

    keras.utils.set_random_seed(3)
    model = build_resnet(8, width=2)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, size=16)
    path = export_model(model, tmp_path / "tiny.tflite")
    result = evaluate_litert(path, (images, labels), batch_size=5, latency_repeats=2)
    expected = model.predict(images, verbose=0).argmax(axis=1)
    np.testing.assert_array_equal(result["predictions"], expected)
    assert result["size_bytes"] == path.stat().st_size
    # A dataset of batches works like arrays.
    from kd_keras import make_dataset

    batched = evaluate_litert(
        path,
        make_dataset(images.astype("uint8"), labels, batch_size=4, training=False),
        latency_repeats=2,
    )
    np.testing.assert_array_equal(batched["predictions"], expected)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--format", "onnx"], "unknown format 'onnx'; choose one of saved_model, litert"),
        (["--stage", "studnet"], "stage 'studnet' is not in run"),
        (["--stage", "student_distilled"], "has not finished stage 'student_distilled'"),
        (["--quantize", "int4"], "unknown quantisation 'int4'"),
        (["--limit", "0"], "max_images must be an int >= 1 or None, got 0"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(extra, fragment, tmp_path, capsys):
    from kd_keras.cli import main

    run = fake_run(tmp_path / "run")
    assert main(["export", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd_keras: error: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (run / "export").exists()


@pytest.mark.slow
def test_cli_exports_teacher_and_student_and_prints_the_table(smoke_run, tmp_path, capsys):
    from kd_keras.cli import main

    run = copy_run(smoke_run, tmp_path / "run")
    argv = [
        "export",
        str(run),
        "--stage",
        "teacher",
        "student_distilled",
        "--quantize",
        "int8",
        "--limit",
        "40",
        "--latency-repeats",
        "5",
        "--calibration-images",
        "32",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "teacher@int8" in out and "student_distilled@int8" in out
    assert "teacher vs distilled student (int8): the teacher's file is" in out
    assert str(run / "export" / "teacher" / "int8.tflite") in out
    saved = json.loads((run / "results.json").read_text())
    assert [r["variant"] for r in saved["teacher_vs_student"]] == ["keras", "int8"]
    assert main(argv) == 0  # Both exported: the same command skips them.
    assert capsys.readouterr().out.count("already exported, skipped") == 2


# --------------------------------------------------------------------------
# An interrupted export continues
# --------------------------------------------------------------------------


@pytest.fixture
def tiny_run(tmp_path):
    """A finished run folder on generated data: 4 classes of 16x16 images
    in an `.npz`, and a tiny Keras model as its distilled student."""
    import keras

    from kd_keras import RunConfig

    rng = np.random.default_rng(0)
    labels = np.arange(80) % 4
    images = rng.integers(0, 256, size=(80, 16, 16, 3), dtype=np.uint8)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=images[:60], y_train=labels[:60], x_test=images[60:], y_test=labels[60:])
    fields = RunConfig.from_preset("smoke").to_dict()
    fields.update(
        data=str(data), val_size=8, train_per_class=None, val_per_class=None, test_per_class=None
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(RunConfig.from_dict(fields).to_json())
    (run / "stages").mkdir()
    row = {"stage": "student_distilled", "model": "tiny", "test_accuracy": 0.25}
    (run / "stages" / "student_distilled.json").write_text(json.dumps(row))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    (run / "models").mkdir()
    keras.Model(inputs, outputs, name="tiny").save(run / "models" / "student_distilled.keras")
    return run


def _leftovers(run):
    return sorted(
        str(p.relative_to(run)) for p in (run / "export").rglob("*") if p.name.startswith(".")
    )


def _ours(system_temp):
    """What an export left in the system's temp folder, but TensorFlow's
    autograph sources (its own, removed when the process exits)."""
    return [p.name for p in system_temp.iterdir() if not p.name.startswith("__autograph_generated")]


def test_export_continues_after_the_leftovers_of_a_kill(tiny_run, tmp_path, monkeypatch):
    """The folder as a SIGKILL during an export leaves it: one variant
    complete, a SavedModel without its row, a half-converted SavedModel
    (`.saved_model.partial-*`) and a temporary .tflite. The same call
    continues: the complete variant is kept as it is, the others redone."""
    from kd_keras.export.exporter import export_run

    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_temp))
    monkeypatch.setattr("tempfile.tempdir", None)
    options = dict(formats=["saved_model", "litert"], quantizations=["none"], latency_repeats=2)
    first = export_run(tiny_run, **dict(options, formats=["litert"]))
    stage_dir = tiny_run / "export" / "student_distilled"
    complete = (stage_dir / "float32.tflite").read_bytes(), (stage_dir / "float32.json").read_text()
    (stage_dir / "saved_model" / "variables").mkdir(parents=True)
    (stage_dir / "saved_model" / "saved_model.pb").write_bytes(b"orphan")
    (stage_dir / ".saved_model.partial-k1ll0000" / "saved_model").mkdir(parents=True)
    (stage_dir / ".float16.x7x7x7x7.tmp.tflite").write_bytes(b"half")
    plan = plan_exports(
        tiny_run, ["student_distilled"], export_specs(["saved_model", "litert"], ["none"])
    )
    assert [s.variant for _, s in plan] == ["saved_model"]  # The orphan is not an export.
    assert [s.variant for _, s in plan.skipped] == ["float32"]
    lines = []
    rows = export_run(tiny_run, log=lines.append, **options)
    assert [r["stage"] for r in rows] == [
        "student_distilled@saved_model",
        "student_distilled@float32",
    ]
    assert rows[1] == first[0]  # Skipped: the recorded row, untouched.
    assert "student_distilled@float32: already exported, skipped" in lines[0]
    assert not any("float32: exporting" in line for line in lines)
    assert (stage_dir / "float32.tflite").read_bytes() == complete[0]
    assert (stage_dir / "float32.json").read_text() == complete[1]
    assert (stage_dir / "saved_model" / "saved_model.pb").read_bytes() != b"orphan"
    assert _leftovers(tiny_run) == []
    assert _ours(system_temp) == []  # No kd_keras_export_* in the system's temp.
    assert [r["stage"] for r in read_export_rows(tiny_run)] == [r["stage"] for r in rows]
    # Everything done: the same command again exports nothing.
    again = []
    assert export_run(tiny_run, log=again.append, **options) == rows
    assert all("skipped" in line for line in again)


@pytest.mark.slow
def test_sigkill_during_export_then_the_same_command_continues(tiny_run, tmp_path):
    import signal

    system_temp = tmp_path / "system-temp"
    system_temp.mkdir()
    argv = [
        sys.executable,
        "-m",
        "kd_keras",
        "export",
        str(tiny_run),
        "--format",
        "saved_model",
        "litert",
        "--quantize",
        "none",
        "float16",
        "--latency-repeats",
        "2",
    ]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO), "TMPDIR": str(system_temp)}
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "student_distilled@float32: exporting" in line:
            process.send_signal(signal.SIGKILL)  # In the middle of the second variant.
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    saved_model = tiny_run / "export" / "student_distilled" / "saved_model"
    before = (saved_model / "saved_model.pb").stat().st_mtime_ns
    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "student_distilled@saved_model: already exported, skipped" in again.stdout
    assert (saved_model / "saved_model.pb").stat().st_mtime_ns == before
    assert [r["stage"] for r in read_export_rows(tiny_run)] == [
        "student_distilled@saved_model",
        "student_distilled@float32",
        "student_distilled@float16",
    ]
    assert _leftovers(tiny_run) == []
    assert _ours(system_temp) == []


class ResourceExhaustedError(Exception):
    """Named as TensorFlow's, which is how it reports a full disk."""


def test_a_full_disk_during_conversion_says_disk_full_not_out_of_memory(tmp_path, monkeypatch):
    import keras

    from kd_keras.errors import DiskWriteError, describe, exit_code
    from kd_keras.export import exporter

    def full(*args):
        raise ResourceExhaustedError("could not write variables: No space left on device")

    monkeypatch.setattr(exporter, "litert_flatbuffer", full)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(DiskWriteError) as raised:
        exporter.export_model(model, tmp_path / "m.tflite")
    line = describe(raised.value)
    assert (
        line
        == f"could not write beside '{tmp_path / 'm.tflite'}': the disk is full: free some space"
    )
    assert exit_code(raised.value) == 1
    assert list(tmp_path.iterdir()) == []
    # Raised as TensorFlow raises it, it is named a full disk too.
    tf_error = ResourceExhaustedError("No space left on device")
    assert describe(tf_error).startswith("the disk is full") and exit_code(tf_error) == 1
