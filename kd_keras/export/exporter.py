"""Shipping a trained model: SavedModel and LiteRT (TFLite) export, with
quantisation, and measuring what was shipped.

`export_model(model, path, format=..., quantize=...)` writes one file (or,
for a SavedModel, one folder) atomically. The model is first made an
inference copy: float32 arithmetic (a `mixed_bfloat16` model computes in
float32; its weights are float32 already) and batch norm folded into the
convolutions (`kd_keras.fold_batch_norm`). A LiteRT file is converted by
`tf.lite.TFLiteConverter.from_saved_model` from a SavedModel of that copy,
with LiteRT's built-in ops only (no TensorFlow "select" ops), so it runs on
the plain LiteRT runtime (`ai-edge-litert`). The quantisations:

* `none`: float32.
* `float16`: weights stored as float16, computed in float32.
* `dynamic`: int8 weights; activations quantised on the fly where a kernel
  allows. No calibration.
* `int8`: full integer. Weights and activations are int8; the activation
  ranges are calibrated on `representative_images` (raw 0..255 pixels, as
  the model takes them). With `io="float32"` the file still takes float32
  pixels and returns float32 logits (it quantises and dequantises inside);
  with `io="int8"` it takes int8 pixels and returns int8 logits. The
  input's scale and zero point come from the calibration; for pixels that
  span 0..255 they are 1.0 and -128, so the int8 input is `pixel - 128`
  (exact for 8-bit images). Logits are `(q - zero_point) * scale`.
  `evaluate_litert` does both conversions from the file's own parameters.

`evaluate_litert(path, dataset)` runs a `.tflite` file through the LiteRT
interpreter on a labelled dataset (accuracy, cross-entropy, top-1
predictions) and times it on one image; `evaluate_saved_model` does the
same through TensorFlow. `export_run` does it all for a run folder: every
requested variant of every requested stage, each evaluated on the run's
test set and compared with the stage's Keras model measured the same way in
the same process, as rows `<stage>@<variant>` of the run's results.
"""

import contextlib
import errno
import fnmatch
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import keras
import numpy as np

from kd_keras import atomic
from kd_keras.errors import DiskWriteError, ExportError, is_disk_full
from kd_keras.export.plan import plan_exports, read_only_error, validate_options
from kd_keras.export.spec import (
    ExportSpec,
    export_path,
    export_specs,
    file_sha256,
    model_path,
    path_size,
    row_name,
    row_path,
)
from kd_keras.models.folding import fold_batch_norm
from kd_keras.models.layer_swap import copy_weights, model_config, rebuild
from kd_keras.owned_files import TEMP_PATTERN, RemovalPlan, remove_planned
from kd_keras.run_folder import RunFolder

LATENCY_WARMUP = 20  # Calls before timing: graph tracing, caches, allocation.
MAX_MESSAGE = 240  # Characters of a converter message kept in an error.


# --------------------------------------------------------------------------
# The inference copy
# --------------------------------------------------------------------------
def _dtype_name(layer):
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "name", "float32")


def float32_copy(model):
    """A copy of `model` whose layers all compute in float32.

    A `mixed_bfloat16` model keeps float32 weights, so the copy has the
    same weights and computes what the model computes, without the
    bfloat16 rounding. Returns `model` itself when every layer is float32
    already, or when the model cannot be rebuilt from its config (a
    subclassed model).
    """
    names = [
        layer.name
        for layer in model.layers
        if _dtype_name(layer) != "float32" and not isinstance(layer, keras.layers.InputLayer)
    ]
    if not names:
        return model
    try:
        model_config(model)
    except ValueError:
        return model

    def to_float32(entry):
        return {**entry, "config": {**entry["config"], "dtype": "float32"}}

    copy = rebuild(model, edit={name: to_float32 for name in names})
    copy_weights(model, copy)
    return copy


def inference_copy(model):
    """The model as it is exported: float32 (`float32_copy`), with batch
    norm folded into the convolutions (`fold_batch_norm`) where it can be.
    """
    copy = float32_copy(model)
    try:
        copy = fold_batch_norm(copy)
    except ValueError:
        pass  # Not rebuildable: the converter folds what it can itself.
    return copy


# --------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------
def _short_converter_message(error):
    """The informative part of a converter error, on one line."""
    text = str(error) or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("TF Select ops:"):
            ops = line.split(":", 1)[1].strip()
            return f"ops with no LiteRT built-in kernel: {ops}"
    for line in lines:
        if "error:" in line and "failed while converting" not in line:
            message = line.split("error:", 1)[1].strip()
            if message.startswith("loc(") and "): " in message:
                message = message.rsplit("): ", 1)[1]
            if message:
                text = message
                break
    else:
        text = lines[0] if lines else text
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _conversion_hint(spec):
    if spec.quantize == "int8":
        return (
            "try --quantize dynamic or float16 (they keep float kernels where "
            "int8 has none), or build the model from stock Keras layers"
        )
    return (
        "build the model from stock Keras layers (those LiteRT has kernels "
        "for), or ship --format saved_model"
    )


def _representative(images):
    """Calibration images as a float32 array `(N, ...)`, validated."""
    if images is None:
        raise ExportError(
            "quantize='int8' needs representative_images: a few hundred "
            "training images (raw pixels, as the model takes them)"
        )
    array = np.asarray(images, dtype="float32")
    if array.ndim < 2 or len(array) < 1:
        raise ExportError(
            f"representative_images must be an array of at least one image, got shape {array.shape}"
        )
    return array


def _check_target(path, spec, overwrite):
    path = Path(path)
    if spec.format == "litert" and path.suffix != ".tflite":
        raise ExportError(f"a LiteRT file's path must end in '.tflite', got '{path}'")
    if spec.format == "saved_model" and path.suffix in (".tflite", ".keras", ".h5"):
        raise ExportError(
            f"a SavedModel is a folder; '{path}' looks like a file name, give a folder path"
        )
    if path.exists() and not overwrite:
        raise ExportError(f"'{path}' already exists; pass overwrite=True to replace it")
    return path


def _write_saved_model(model, path):
    model.export(str(path), format="tf_saved_model", verbose=False)


@contextlib.contextmanager
def _atomic_folder(path):
    """Yields a new temporary folder beside `path`; moves it to `path` on
    success (replacing what was there), removes it on failure.

    Its name (`.<name>.partial-XXXX`) is one `export_run` removes when it
    starts, should a kill leave it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    except OSError as error:
        raise atomic.write_error(path, error) from None
    try:
        yield tmp / path.name
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp / path.name, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        raise atomic.write_error(path, error) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert(model, spec, representative_images, work_dir):
    import tensorflow as tf

    # The intermediate SavedModel goes beside the target, never into the
    # system's temp: a kill leaves it where the next export removes it.
    with tempfile.TemporaryDirectory(prefix=".saved_model.partial-", dir=work_dir) as folder:
        saved = Path(folder) / "saved_model"
        _write_saved_model(model, saved)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if spec.quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if spec.quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif spec.quantize == "int8":
            images = representative_images

            def representative_dataset():
                for image in images:
                    yield [image[None]]

            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if spec.io == "int8":
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        return converter.convert()


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
    path = _check_target(path, spec, overwrite)
    images = _representative(representative_images) if spec.quantize == "int8" else None
    if not isinstance(model, keras.Model):
        raise ExportError(f"model must be a keras.Model, got {type(model).__name__}")
    copy = inference_copy(model)
    if spec.format == "saved_model":
        with _atomic_folder(path) as tmp:
            try:
                _write_saved_model(copy, tmp)
            except (ValueError, TypeError, NotImplementedError) as error:
                raise ExportError(
                    f"cannot export model '{model.name}' as a SavedModel: "
                    f"{_short_converter_message(error)}"
                ) from None
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        flatbuffer = _convert(copy, spec, images, path.parent)
    except OSError as error:
        raise atomic.write_error(path, error) from None
    except Exception as error:  # The converter raises many types.
        if is_disk_full(error):
            raise DiskWriteError(
                errno.ENOSPC, f"could not write beside '{path}': the disk is full: free some space"
            ) from None
        raise ExportError(
            f"the LiteRT converter cannot convert model '{model.name}' to "
            f"{spec.variant} ({spec.describe()}): {_short_converter_message(error)}; "
            f"{_conversion_hint(spec)}"
        ) from None
    with atomic.atomic_path(path) as tmp:
        Path(tmp).write_bytes(flatbuffer)
    return path


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------
def _as_arrays(dataset, max_images=None):
    """`(images float32, labels int64)` from an `(images, labels)` tuple of
    arrays or a dataset (any other iterable) of `(images, labels)` batches."""
    if isinstance(dataset, tuple) and len(dataset) == 2:
        images, labels = dataset
        images = np.asarray(images)
        labels = np.asarray(labels)
        if max_images is not None:
            images, labels = images[:max_images], labels[:max_images]
    else:
        image_parts, label_parts, count = [], [], 0
        for batch in dataset:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ExportError(
                    f"dataset must yield (images, labels) batches, got {type(batch).__name__}"
                )
            image_parts.append(np.asarray(batch[0]))
            label_parts.append(np.asarray(batch[1]))
            count += len(label_parts[-1])
            if max_images is not None and count >= max_images:
                break
        if not image_parts:
            raise ExportError("dataset holds no images")
        images = np.concatenate(image_parts)[:max_images]
        labels = np.concatenate(label_parts)[:max_images]
    labels = labels.reshape(-1)
    if len(images) == 0 or len(images) != len(labels):
        raise ExportError(
            f"dataset must hold images and as many labels, got {len(images)} "
            f"images and {len(labels)} labels"
        )
    return images.astype("float32"), labels.astype("int64")


def _cross_entropy(logits, labels):
    logits = np.asarray(logits, dtype="float64")
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))


def _scores(logits, labels):
    predictions = np.asarray(logits).argmax(axis=1)
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "loss": _cross_entropy(logits, labels),
        "predictions": predictions,
    }


def _median_ms(call, repeats, warmup=LATENCY_WARMUP):
    """Median wall time of `call()` over `repeats` calls after `warmup`, in ms."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def litert_interpreter_class():
    """The LiteRT interpreter: `ai_edge_litert`'s, else TensorFlow's
    (deprecated in its favour) if the package is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, f"ai-edge-litert {metadata.version('ai-edge-litert')}"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow {tf.__version__} tf.lite"


def _quantization(detail):
    scale, zero_point = detail["quantization"]
    if not scale:
        return None
    return {"scale": float(scale), "zero_point": int(zero_point)}


def _to_input(images, detail):
    """Float pixels as the file's input type (quantised for int8 inputs)."""
    dtype = np.dtype(detail["dtype"])
    quant = _quantization(detail)
    if dtype.kind in "iu" and quant is not None:
        info = np.iinfo(dtype)
        q = np.round(images / quant["scale"] + quant["zero_point"])
        return np.clip(q, info.min, info.max).astype(dtype)
    return images.astype(dtype)


def _from_output(values, detail):
    """Output values as float logits (dequantised for int8 outputs)."""
    quant = _quantization(detail)
    if np.dtype(detail["dtype"]).kind in "iu" and quant is not None:
        return (values.astype("float32") - quant["zero_point"]) * quant["scale"]
    return values.astype("float32")


def _io_description(detail):
    return {"dtype": np.dtype(detail["dtype"]).name, "quantization": _quantization(detail)}


def evaluate_litert(
    path,
    dataset,
    *,
    batch_size=100,
    latency_repeats=200,
    threads=None,
    max_images=None,
):
    """Runs a LiteRT (`.tflite`) file on a labelled dataset and times it.

    Images are given as float pixels (as to the Keras model); for a file
    with int8 inputs they are quantised with the file's input scale and
    zero point, and int8 logits are dequantised with its output's.

    Args:
        path: a `.tflite` file.
        dataset: an `(images, labels)` tuple of arrays, or an iterable
            (e.g. a `tf.data.Dataset`) of `(images, labels)` batches.
        batch_size: images per interpreter call while evaluating (the
            results equal one-image calls; it is only faster).
        latency_repeats: timed one-image calls (after `LATENCY_WARMUP`
            untimed ones); `latency_ms` is their median.
        threads: interpreter threads (None: 1, LiteRT's default).
        max_images: evaluate on the first `max_images` images only.

    Returns:
        A dict: `accuracy`, `loss` (mean cross-entropy of the logits),
        `predictions` (int array of top-1 classes), `images`, `latency_ms`,
        `latency_repeats`, `size_bytes`, `input` and `output` (`dtype` and
        `quantization`: `{"scale", "zero_point"}` or None), `threads`,
        `runtime`.

    Raises:
        ExportError: a missing or unreadable file, a bad dataset or option.

    Example:

    >>> result = evaluate_litert("student_int8.tflite", (x_test, y_test))
    >>> result["accuracy"], result["latency_ms"]
    """
    validate_options(
        max_images=max_images,
        batch_size=batch_size,
        latency_repeats=latency_repeats,
        threads=threads,
    )
    path = Path(path)
    if not path.is_file() or path.suffix != ".tflite":
        raise ExportError(f"'{path}' is not a LiteRT file (no such .tflite file)")
    images, labels = _as_arrays(dataset, max_images)
    Interpreter, runtime = litert_interpreter_class()
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads or 1)
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"'{path}' is not a loadable LiteRT file: {error}") from None
    detail = interpreter.get_input_details()[0]
    out_detail = interpreter.get_output_details()[0]
    shape = tuple(int(d) for d in detail["shape"][1:])
    if images.shape[1:] != shape:
        raise ExportError(
            f"'{path}' takes images of shape {shape}, the dataset holds {images.shape[1:]}"
        )
    batch = min(batch_size, len(images))
    interpreter.resize_tensor_input(detail["index"], [batch, *shape])
    interpreter.allocate_tensors()
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        count = len(chunk)
        if count < batch:  # Pad the last batch instead of resizing again.
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - count, axis=0)])
        interpreter.set_tensor(detail["index"], _to_input(chunk, detail))
        interpreter.invoke()
        outputs.append(
            _from_output(interpreter.get_tensor(out_detail["index"]), out_detail)[:count]
        )
    result = _scores(np.concatenate(outputs), labels)

    single = Interpreter(model_path=str(path), num_threads=threads or 1)
    single.resize_tensor_input(detail["index"], [1, *shape])
    single.allocate_tensors()
    one = _to_input(images[:1], detail)

    def call():
        single.set_tensor(detail["index"], one)
        single.invoke()
        single.get_tensor(out_detail["index"])

    result.update(
        images=len(labels),
        latency_ms=_median_ms(call, latency_repeats),
        latency_repeats=latency_repeats,
        size_bytes=path_size(path),
        input=_io_description(detail),
        output=_io_description(out_detail),
        threads=threads or 1,
        runtime=runtime,
    )
    return result


def _serving_function(loaded, path):
    """`images -> logits` of a Keras-exported SavedModel's `serve` endpoint
    (a functional model's endpoint takes its inputs as a list)."""
    serve = getattr(loaded, "serve", None)
    if serve is None:
        raise ExportError(f"'{path}' has no 'serve' endpoint; export it with export_model")
    signature = getattr(serve, "input_signature", None) or ()
    as_list = bool(signature) and isinstance(signature[0], (list, tuple))

    def call(images):
        # Refers to `loaded`, which owns the variables `serve` reads.
        return loaded.serve([images] if as_list else images)

    return call


def evaluate_saved_model(path, dataset, *, batch_size=100, latency_repeats=200, max_images=None):
    """Runs an exported SavedModel (its `serve` endpoint) through TensorFlow
    on a labelled dataset and times it; returns what `evaluate_litert`
    returns (`input`/`output` float32, `threads` None)."""
    import tensorflow as tf

    validate_options(max_images=max_images, batch_size=batch_size, latency_repeats=latency_repeats)
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise ExportError(f"'{path}' is not a SavedModel folder (no saved_model.pb)")
    images, labels = _as_arrays(dataset, max_images)
    serve = _serving_function(tf.saved_model.load(str(path)), path)
    outputs = [
        serve(tf.constant(images[start : start + batch_size])).numpy()
        for start in range(0, len(images), batch_size)
    ]
    result = _scores(np.concatenate(outputs), labels)
    one = tf.constant(images[:1])
    result.update(
        images=len(labels),
        latency_ms=_median_ms(lambda: serve(one).numpy(), latency_repeats),
        latency_repeats=latency_repeats,
        size_bytes=path_size(path),
        input={"dtype": "float32", "quantization": None},
        output={"dtype": "float32", "quantization": None},
        threads=None,
        runtime=f"tensorflow {tf.__version__}",
    )
    return result


def evaluate_keras(model, images, labels, *, batch_size=256, latency_repeats=200):
    """The Keras model measured as its exports are: accuracy, loss, top-1
    predictions on `images`, and the median one-image latency (a traced
    `model(x, training=False)`, warm) in ms."""
    import tensorflow as tf

    logits = model.predict(images, batch_size=batch_size, verbose=0)
    result = _scores(np.asarray(logits, dtype="float32"), labels)
    forward = tf.function(lambda x: model(x, training=False))
    one = tf.constant(images[:1])
    result["latency_ms"] = _median_ms(lambda: forward(one).numpy(), latency_repeats)
    return result


# --------------------------------------------------------------------------
# A run folder
# --------------------------------------------------------------------------
def load_stage_model(run_dir, stage):
    """The stage's `models/<stage>.keras`, loaded in Keras's safe mode."""
    path = model_path(run_dir, stage)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for bad files.
        raise ExportError(f"cannot load '{path}': {_short_converter_message(error)}") from None


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
    return fnmatch.fnmatchcase(path.name, TEMP_PATTERN)


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
    from kd_keras.data.splits import splits_for

    config = RunFolder(run_dir).config()
    seed = config.seed if seed is None else seed
    splits = splits_for(config, data=data)
    test_images, test_labels = splits["test"]
    if max_images is not None:
        test_images, test_labels = test_images[:max_images], test_labels[:max_images]
    test_images = test_images.astype("float32")
    calibration = None
    if any(spec.quantize == "int8" for _, spec in plan):
        calibration = calibration_sample(splits["train"][0], calibration_images, seed)
        calibration = calibration.astype("float32")
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
            if spec.format == "litert":
                measured = evaluate_litert(
                    target,
                    (test_images, test_labels),
                    batch_size=batch_size,
                    latency_repeats=latency_repeats,
                    threads=threads,
                )
            else:
                measured = evaluate_saved_model(
                    target,
                    (test_images, test_labels),
                    batch_size=batch_size,
                    latency_repeats=latency_repeats,
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
