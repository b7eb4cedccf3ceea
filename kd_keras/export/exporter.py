"""Shipping a trained model: `export_model` writes one SavedModel or
LiteRT file, `export_run` every requested variant of a run folder's stages.

`export_model(model, path, format=..., quantize=...)` writes one file (or,
for a SavedModel, one folder) atomically. The model is first made an
inference copy: float32 arithmetic (a `mixed_bfloat16` model computes in
float32; its weights are float32 already) and batch norm folded into the
convolutions (`kd_keras.fold_batch_norm`); the conversion and the
quantisations are `kd_keras.export.convert`'s.

`export_run` does it all for a run folder: every requested variant of every
requested stage, each evaluated on the run's test set
(`kd_keras.export.evaluate`) and compared with the stage's Keras model
measured the same way in the same process, as rows `<stage>@<variant>` of
the run's results. Complete variants are kept, so a killed export resumes.
"""

import errno
import shutil
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np

from kd_keras import atomic
from kd_keras.errors import DiskWriteError, ExportError, is_disk_full
from kd_keras.export.convert import (
    atomic_folder,
    check_target,
    conversion_hint,
    inference_copy,
    litert_flatbuffer,
    representative_array,
    short_converter_message,
    write_saved_model,
)
from kd_keras.export.evaluate import evaluate_keras, evaluate_litert, evaluate_saved_model
from kd_keras.export.plan import plan_exports, read_only_error, validate_options
from kd_keras.export.spec import (
    ExportSpec,
    export_path,
    export_specs,
    file_sha256,
    model_path,
    row_name,
    row_path,
)
from kd_keras.owned_files import RemovalPlan, is_temporary, remove_planned
from kd_keras.run_folder import RunFolder


def export_model(
    model,
    path,
    *,
    format="litert",
    quantize="none",
    io="float32",
    representative_images=None,
    overwrite=False,
):
    """Exports a Keras model as a SavedModel folder or a LiteRT file.

    The exported model is the float32, batch-norm-folded inference copy of
    `model` (see the module docstring), quantised as asked. The file (or
    folder) is written under a temporary name and renamed into place, so
    `path` never holds a half-written export.

    Args:
        model: a `keras.Model` (functional models are exported folded and
            in float32; others as they are).
        path: a `.tflite` file for `format="litert"`, a folder for
            `format="saved_model"`.
        format: "litert" or "saved_model".
        quantize: "none", "float16", "dynamic" or "int8" (LiteRT only).
        io: "float32" or "int8": the input and output type of an int8 file.
        representative_images: calibration images for `quantize="int8"`
            (raw pixels, shape `(N,) + input shape`; a few hundred training
            images). Not used otherwise.
        overwrite: replace an existing `path`.

    Returns:
        The `Path` written.

    Raises:
        ExportError: an unknown format, quantisation or io type, an invalid
            combination, a bad path, an existing path without `overwrite`,
            missing calibration images, or a model the exporter or the
            converter cannot handle (its message, shortened, and what to try).
        kd_keras.errors.DiskWriteError: the file could not be written.

    Example:

    >>> model = keras.saving.load_model("runs/quick/models/student_distilled.keras")
    >>> export_model(model, "student_int8.tflite", quantize="int8",
    ...              representative_images=x_train[:256])
    """
    spec = ExportSpec.make(format, quantize, io)
    path = check_target(path, spec, overwrite)
    images = representative_array(representative_images) if spec.quantize == "int8" else None
    if not isinstance(model, keras.Model):
        raise ExportError(f"model must be a keras.Model, got {type(model).__name__}")
    copy = inference_copy(model)
    if spec.format == "saved_model":
        with atomic_folder(path) as tmp:
            try:
                write_saved_model(copy, tmp)
            except (ValueError, TypeError, NotImplementedError) as error:
                raise ExportError(
                    f"cannot export model '{model.name}' as a SavedModel: "
                    f"{short_converter_message(error)}"
                ) from None
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        flatbuffer = litert_flatbuffer(copy, spec, images, path.parent)
    except OSError as error:
        raise atomic.write_error(path, error) from None
    except Exception as error:  # The converter raises many types.
        if is_disk_full(error):
            raise DiskWriteError(
                errno.ENOSPC, f"could not write beside '{path}': the disk is full: free some space"
            ) from None
        raise ExportError(
            f"the LiteRT converter cannot convert model '{model.name}' to "
            f"{spec.variant} ({spec.describe()}): {short_converter_message(error)}; "
            f"{conversion_hint(spec)}"
        ) from None
    with atomic.atomic_path(path) as tmp:
        Path(tmp).write_bytes(flatbuffer)
    return path


# --------------------------------------------------------------------------
# A run folder
# --------------------------------------------------------------------------
def load_stage_model(run_dir, stage):
    """The stage's `models/<stage>.keras`, loaded in Keras's safe mode."""
    path = model_path(run_dir, stage)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for bad files.
        raise ExportError(f"cannot load '{path}': {short_converter_message(error)}") from None


def calibration_sample(images, size, seed):
    """A seeded sample of `size` images (all if fewer), drawn without replacement."""
    rng = np.random.default_rng(seed)
    size = min(size, len(images))
    return images[rng.choice(len(images), size=size, replace=False)]


def _round(value, digits=4):
    return None if value is None else round(float(value), digits)


def export_run(
    run_dir,
    *,
    stages=("student_distilled",),
    formats=("litert",),
    quantizations=None,
    io=("float32",),
    calibration_images=256,
    seed=None,
    data=None,
    max_images=None,
    batch_size=100,
    latency_repeats=200,
    threads=None,
    overwrite=False,
    log=None,
):
    """Exports stages of a run folder and adds the measured rows to its results.

    For each stage, its `models/<stage>.keras` is measured on the run's test
    set (as the run's `config.json` rebuilds it) and on one image; then each
    variant is exported into `export/<stage>/`, evaluated for real (LiteRT
    files through the LiteRT interpreter, the SavedModel through
    TensorFlow) on the same images, and recorded as the row
    `<stage>@<variant>` (`export/<stage>/<variant>.json`). Last, the run's
    `results.csv`, `results.json` and plots are rewritten with the new rows.

    Everything is checked before any work (`plan_exports`); the run folder
    is locked while exporting. A variant is complete once its row is
    written (`kd_keras.export.plan.export_status`): without `overwrite`,
    complete variants are skipped, so after a kill the same call continues
    where it stopped; the leftovers of unfinished ones (a file without its
    row, `.*.partial-*` folders, temporary files) are removed when an export
    starts and ends. Nothing is written outside the run's `export/` and
    results files, not even in the system's temp folder.

    Args:
        run_dir: a kd_keras run folder.
        stages: stage names (default: the distilled student).
        formats, quantizations, io: the variants (see `export_specs`;
            by default a full-integer LiteRT file with float input/output).
        calibration_images: training images of the run (a seeded sample)
            that calibrate the int8 ranges.
        seed: seed of that sample (default: the run's seed).
        data: the CIFAR-10 source, if not the one in the run's config.
        max_images: evaluate on the first `max_images` test images only
            (default: the run's whole test set).
        batch_size: images per call while evaluating.
        latency_repeats: timed one-image calls per model.
        threads: LiteRT interpreter threads (None: 1, LiteRT's default).
        overwrite: replace existing exports.
        log: a function taking one line of progress text, or None.

    Returns:
        The rows of the request (dicts, as in `results.json`): the new ones
        and, for variants skipped as complete, the recorded ones.

    Raises:
        ExportError: see `plan_exports`, `export_model`.
        kd_keras.errors.RunLockedError: another process holds the run.
        kd_keras.DatasetError: the run's data cannot be loaded.

    Example:

    >>> rows = export_run("runs/quick", quantizations=["none", "int8"])
    >>> [r["stage"] for r in rows]
    ['student_distilled@float32', 'student_distilled@int8']
    """
    from kd_keras.report.results import load_stage_rows, write_results

    run_dir = Path(run_dir)
    validate_options(
        calibration_images=calibration_images,
        max_images=max_images,
        batch_size=batch_size,
        latency_repeats=latency_repeats,
        threads=threads,
        seed=seed,
    )
    specs = export_specs(formats, quantizations, io)
    plan_exports(run_dir, stages, specs, overwrite=overwrite)  # Before the lock makes anything.
    say = log or (lambda line: None)
    done = {}
    lock = atomic.RunLock(run_dir)
    try:
        lock.acquire()
    except OSError as error:
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise read_only_error(run_dir) from None
        raise DiskWriteError(
            error.errno, f"could not write '{lock.path}': {error.strerror or error}"
        ) from None
    with lock:
        RunFolder(run_dir).check_real_folders()
        # Again under the lock: another export may have finished some.
        plan = plan_exports(run_dir, stages, specs, overwrite=overwrite)
        for stage, spec in plan.skipped:
            name = row_name(stage, spec.variant)
            say(f"{name}: already exported, skipped (--overwrite exports it again)")
            done[(stage, spec.variant)] = atomic.read_json(row_path(run_dir, stage, spec.variant))
        remove_export_leftovers(run_dir)
        try:
            if plan:
                _export_planned(
                    run_dir,
                    plan,
                    done,
                    say,
                    calibration_images,
                    seed,
                    data,
                    max_images,
                    batch_size,
                    latency_repeats,
                    threads,
                )
                write_results(run_dir, load_stage_rows(run_dir))
        finally:
            remove_export_leftovers(run_dir)  # A failed variant's partial files.
    order = [(stage, spec.variant) for stage, spec in plan.requested]
    return [done[key] for key in order if key in done]


def remove_export_leftovers(run_dir):
    """Removes what an interrupted export leaves in a run's `export/`: the
    temporary files and `.*.partial-*` / `.*.old-*` folders of writes that
    did not finish. Call it holding the run's lock."""
    export_dir = RunFolder(run_dir).export_dir
    plan = RunFolder(run_dir).removal_plan()
    leftovers = RemovalPlan(
        files=[p for p in plan.files if p.is_relative_to(export_dir) and _is_temporary(p)],
        trees=[p for p in plan.trees if p.is_relative_to(export_dir)],
    )
    remove_planned(leftovers)


def _is_temporary(path):
    return is_temporary(path.name)


def _run_images(run_dir, plan, calibration_images, seed, data, max_images):
    """`(test_images, test_labels, calibration, seed)` of a run: its test
    set (the first `max_images`), float32, and, if a variant is int8, a
    seeded float32 sample of its training images (else None)."""
    from kd_keras.data.splits import splits_for

    config = RunFolder(run_dir).config()
    seed = config.seed if seed is None else seed
    splits = splits_for(config, data=data)
    test_images, test_labels = splits["test"]
    if max_images is not None:
        test_images, test_labels = test_images[:max_images], test_labels[:max_images]
    calibration = None
    if any(spec.quantize == "int8" for _, spec in plan):
        calibration = calibration_sample(splits["train"][0], calibration_images, seed)
        calibration = calibration.astype("float32")
    return test_images.astype("float32"), test_labels, calibration, seed


def _export_planned(
    run_dir,
    plan,
    done,
    say,
    calibration_images,
    seed,
    data,
    max_images,
    batch_size,
    latency_repeats,
    threads,
):
    test_images, test_labels, calibration, seed = _run_images(
        run_dir, plan, calibration_images, seed, data, max_images
    )
    for stage in dict.fromkeys(stage for stage, _ in plan):
        source_row = RunFolder(run_dir).stage_row(stage)
        source_file = model_path(run_dir, stage)
        digest = file_sha256(source_file)
        model = load_stage_model(run_dir, stage)
        say(f"{stage}: measuring the Keras model on {len(test_labels)} test images")
        reference = evaluate_keras(model, test_images, test_labels, latency_repeats=latency_repeats)
        for _, spec in (p for p in plan if p[0] == stage):
            name = row_name(stage, spec.variant)
            target = export_path(run_dir, stage, spec)
            row_file = row_path(run_dir, stage, spec.variant)
            # The row is the variant's completion marker, written last: it goes
            # first, so a kill from here on leaves the variant partial.
            row_file.unlink(missing_ok=True)
            _remove_target(target)
            say(f"{name}: exporting {spec.describe()} to {target.relative_to(run_dir)}")
            export_model(
                model,
                target,
                format=spec.format,
                quantize=spec.quantize,
                io=spec.io,
                representative_images=calibration,
            )
            say(f"{name}: evaluating")
            measured = _evaluate_export(
                spec, target, (test_images, test_labels), batch_size, latency_repeats, threads
            )
            row = _export_row(
                name,
                stage,
                spec,
                source_row,
                source_file,
                digest,
                run_dir,
                target,
                measured,
                reference,
                calibration,
                seed,
            )
            atomic.write_json(row_file, row)
            done[(stage, spec.variant)] = row


def _evaluate_export(spec, target, dataset, batch_size, latency_repeats, threads):
    """What `evaluate_litert` or `evaluate_saved_model` measures of a variant."""
    if spec.format == "litert":
        return evaluate_litert(
            target,
            dataset,
            batch_size=batch_size,
            latency_repeats=latency_repeats,
            threads=threads,
        )
    return evaluate_saved_model(
        target, dataset, batch_size=batch_size, latency_repeats=latency_repeats
    )


def _remove_target(target):
    """Removes a variant's file or SavedModel folder (a link: unlinked)."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)


def _export_row(
    name,
    stage,
    spec,
    source_row,
    source_file,
    digest,
    run_dir,
    target,
    measured,
    reference,
    calibration,
    seed,
):
    import tensorflow as tf

    keras_size = source_file.stat().st_size
    agreement = float(np.mean(measured["predictions"] == reference["predictions"]))
    return {
        "stage": name,
        "model": source_row.get("model"),
        "depth": source_row.get("depth"),
        "params": source_row.get("params"),
        "flops": source_row.get("flops"),
        "size_mb": _round(measured["size_bytes"] / 2**20, 4),
        "test_accuracy": measured["accuracy"],
        "test_loss": measured["loss"],
        "val_accuracy": None,
        "val_loss": None,
        "latency_ms": _round(measured["latency_ms"]),
        "source_stage": stage,
        "format": spec.format,
        "quantize": spec.quantize,
        "io": spec.io,
        "file": str(target.relative_to(run_dir)),
        "size_bytes": measured["size_bytes"],
        "size_ratio": _round(measured["size_bytes"] / keras_size),
        "agreement": agreement,
        "keras_test_accuracy": reference["accuracy"],
        "keras_test_loss": reference["loss"],
        "accuracy_delta_points": _round(100 * (measured["accuracy"] - reference["accuracy"]), 3),
        "keras_latency_ms": _round(reference["latency_ms"]),
        "speedup": _round(reference["latency_ms"] / measured["latency_ms"], 3),
        "latency_repeats": measured["latency_repeats"],
        "test_images": measured["images"],
        "calibration_images": None if spec.quantize != "int8" else len(calibration),
        "calibration_seed": None if spec.quantize != "int8" else seed,
        "input": measured["input"],
        "output": measured["output"],
        "threads": measured["threads"],
        "runtime": measured["runtime"],
        "converter": f"tensorflow {tf.__version__}",
        "source_file": str(source_file.relative_to(run_dir)),
        "source_sha256": digest,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
