"""Converting a Keras model for shipping: the float32, batch-norm-folded
inference copy, the SavedModel, and the LiteRT (TFLite) flatbuffer with its
quantisation.

A LiteRT file is converted by `tf.lite.TFLiteConverter.from_saved_model`
from a SavedModel of the inference copy, with LiteRT's built-in ops only
(no TensorFlow "select" ops), so it runs on the plain LiteRT runtime
(`ai-edge-litert`). The quantisations:

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

The public entry point is `kd_keras.export.exporter.export_model`.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from kd_keras import atomic
from kd_keras.errors import ExportError
from kd_keras.models.folding import fold_batch_norm
from kd_keras.models.layer_swap import copy_weights, model_config, rebuild

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
# SavedModel and LiteRT
# --------------------------------------------------------------------------
def short_converter_message(error):
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


def conversion_hint(spec):
    if spec.quantize == "int8":
        return (
            "try --quantize dynamic or float16 (they keep float kernels where "
            "int8 has none), or build the model from stock Keras layers"
        )
    return (
        "build the model from stock Keras layers (those LiteRT has kernels "
        "for), or ship --format saved_model"
    )


def representative_array(images):
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


def check_target(path, spec, overwrite):
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


def write_saved_model(model, path):
    model.export(str(path), format="tf_saved_model", verbose=False)


@contextlib.contextmanager
def atomic_folder(path):
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


def litert_flatbuffer(model, spec, representative_images, work_dir):
    import tensorflow as tf

    # The intermediate SavedModel goes beside the target, never into the
    # system's temp: a kill leaves it where the next export removes it.
    with tempfile.TemporaryDirectory(prefix=".saved_model.partial-", dir=work_dir) as folder:
        saved = Path(folder) / "saved_model"
        write_saved_model(model, saved)
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
