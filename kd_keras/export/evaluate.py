"""Measuring what was shipped: a LiteRT file, a SavedModel and the Keras
model they came from, each on a labelled dataset (accuracy, cross-entropy,
top-1 predictions) and timed on one image with the same helper
(`median_latency_ms`), so their numbers compare.

`evaluate_litert(path, dataset)` runs a `.tflite` file through the LiteRT
interpreter, converting int8 inputs and outputs with the file's own scale
and zero point; `evaluate_saved_model` runs a SavedModel's `serve` endpoint
through TensorFlow; `evaluate_keras` runs the Keras model.
"""

import time
from importlib import metadata
from pathlib import Path

import numpy as np

from kd_keras.errors import ExportError
from kd_keras.export.plan import validate_options
from kd_keras.export.spec import path_size

LATENCY_WARMUP = 20  # Calls before timing: graph tracing, caches, allocation.


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


def median_latency_ms(call, repeats, warmup=LATENCY_WARMUP):
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


def _litert_logits(interpreter, images, batch_size):
    """The float logits of `images` through `interpreter`, `batch_size` at
    a time (the last batch padded, not resized)."""
    detail = interpreter.get_input_details()[0]
    out_detail = interpreter.get_output_details()[0]
    batch = min(batch_size, len(images))
    interpreter.resize_tensor_input(detail["index"], [batch, *images.shape[1:]])
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
    return np.concatenate(outputs)


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
    result = _scores(_litert_logits(interpreter, images, batch_size), labels)

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
        latency_ms=median_latency_ms(call, latency_repeats),
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
        latency_ms=median_latency_ms(lambda: serve(one).numpy(), latency_repeats),
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
    result["latency_ms"] = median_latency_ms(lambda: forward(one).numpy(), latency_repeats)
    return result
