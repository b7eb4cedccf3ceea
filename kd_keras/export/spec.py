"""What an export of a run's model is, as data: formats, quantisations,
file names, result-row names and the reading of exported rows (a request is
checked against a run folder in `kd_keras.export.plan`).

This module imports neither Keras nor TensorFlow (like `kd_keras.config`),
so the CLI refuses a bad request before TensorFlow starts and the app lists
exported files cheaply. The conversion itself is `kd_keras.export.convert`.

An export is one *variant* of a trained stage's model:

| variant       | format        | weights and arithmetic                   | input / output     |
| ------------- | ------------- | ---------------------------------------- | ------------------ |
| `saved_model` | SavedModel    | float32                                  | float32 / float32  |
| `float32`     | LiteRT        | float32                                  | float32 / float32  |
| `float16`     | LiteRT        | float16 weights, float32 arithmetic      | float32 / float32  |
| `dynamic`     | LiteRT        | int8 weights, int8 arithmetic where the  | float32 / float32  |
|               |               | kernel allows (activations quantised on  |                    |
|               |               | the fly), float elsewhere                |                    |
| `int8`        | LiteRT        | full integer: int8 weights and           | float32 / float32  |
|               |               | activations, calibrated                  | (quantise inside)  |
| `int8_io`     | LiteRT        | full integer, as `int8`                  | int8 / int8        |

In a run folder they live under `export/`:

```
export/<stage>/saved_model/        a TensorFlow SavedModel folder
export/<stage>/<variant>.tflite    a LiteRT (TFLite) flatbuffer
export/<stage>/<variant>.json      the variant's result row
```

A variant's row is named `<stage>@<variant>` (e.g. `student_distilled@int8`)
in `results.csv` and `results.json`. A row counts only while its file exists
and its source model (`models/<stage>.keras`) is the one it was exported
from (`source_sha256`); a stage trained again leaves its old exports out of
the results until they are exported again.
"""

import dataclasses
import hashlib
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import ExportError
from kd_keras.layout import EXPORT_DIR
from kd_keras.run_folder import RunFolder
from kd_keras.stages import STAGES

FORMATS = ("saved_model", "litert")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
IO_TYPES = ("float32", "int8")
VARIANTS = ("saved_model", "float32", "float16", "dynamic", "int8", "int8_io")
ROW_SEPARATOR = "@"

# Columns of an exported model's row added to results.csv (after
# `kd_keras.run_folder.TABLE_COLUMNS`) when a run has exports.
EXPORT_COLUMNS = (
    "source_stage",
    "format",
    "quantize",
    "io",
    "file",
    "size_ratio",
    "agreement",
    "keras_test_accuracy",
    "accuracy_delta_points",
    "keras_latency_ms",
    "speedup",
    "test_images",
)

_QUANTIZE_NOTES = {
    "none": "float32",
    "float16": "float16 weights",
    "dynamic": "dynamic-range int8 weights",
    "int8": "full-integer int8",
}


def _choose(kind, value, choices):
    if value not in choices:
        raise ExportError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")
    return value


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """One export variant: a format, a quantisation and the input/output
    type. Build it with `ExportSpec.make`, which validates."""

    format: str = "litert"
    quantize: str = "none"
    io: str = "float32"

    @classmethod
    def make(cls, format="litert", quantize="none", io="float32"):
        """A validated spec.

        Raises:
            ExportError: an unknown format, quantisation or io type; a
                quantised SavedModel; int8 input/output without full-integer
                quantisation.
        """
        _choose("format", format, FORMATS)
        _choose("quantisation", quantize, QUANTIZATIONS)
        _choose("io type", io, IO_TYPES)
        if format == "saved_model" and quantize != "none":
            raise ExportError(
                f"a SavedModel is not quantised (got quantize={quantize!r}); "
                "quantised models are LiteRT files: use format='litert'"
            )
        if io == "int8" and quantize != "int8":
            raise ExportError(
                f"int8 inputs and outputs need full-integer quantisation "
                f"(got quantize={quantize!r}, io='int8'); use quantize='int8'"
            )
        return cls(format, quantize, io)

    @property
    def variant(self):
        """The variant's name: `saved_model`, `float32`, `float16`,
        `dynamic`, `int8` or `int8_io`."""
        if self.format == "saved_model":
            return "saved_model"
        if self.quantize == "none":
            return "float32"
        if self.quantize == "int8" and self.io == "int8":
            return "int8_io"
        return self.quantize

    @property
    def filename(self):
        """The exported file's (or folder's) name in `export/<stage>/`."""
        return "saved_model" if self.format == "saved_model" else f"{self.variant}.tflite"

    def describe(self):
        """A short human description, e.g. 'LiteRT full-integer int8, int8 in/out'."""
        if self.format == "saved_model":
            return "SavedModel float32"
        io = "int8 in/out" if self.io == "int8" else "float32 in/out"
        return f"LiteRT {_QUANTIZE_NOTES[self.quantize]}, {io}"


def name_list(values, kind):
    """Accepts a string, a comma-separated string or a list of them."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    flat = []
    for value in values:
        if not isinstance(value, str):
            raise ExportError(f"{kind} must be given as names, got {value!r}")
        flat.extend(part.strip() for part in value.split(",") if part.strip())
    return list(dict.fromkeys(flat))  # Keeps order, drops repeats.


def export_specs(formats=("litert",), quantizations=None, io=("float32",)):
    """The variants a request asks for, in `VARIANTS` order.

    A SavedModel is always the float model: `saved_model` in `formats` gives
    one SavedModel whatever the quantisations, which apply to the LiteRT
    files. `io` applies to full-integer (`int8`) files only; asking for both
    io types gives both `int8` and `int8_io`.

    Args:
        formats: names from `FORMATS` (a list, or a comma-separated string).
        quantizations: names from `QUANTIZATIONS`; None (default): `int8`
            for LiteRT (a SavedModel alone: `none`).
        io: names from `IO_TYPES`.

    Returns:
        A list of `ExportSpec`.

    Raises:
        ExportError: an unknown name, nothing to export, quantisations asked
            of a SavedModel alone, or int8 io without int8 quantisation.

    Example:

    >>> [s.variant for s in export_specs(["saved_model", "litert"], ["none", "int8"])]
    ['saved_model', 'float32', 'int8']
    """
    formats = name_list(formats, "formats")
    quantizations = name_list(quantizations, "quantisations") or (
        ["int8"] if "litert" in formats else ["none"]
    )
    io = name_list(io, "io types") or ["float32"]
    for value in formats:
        _choose("format", value, FORMATS)
    for value in quantizations:
        _choose("quantisation", value, QUANTIZATIONS)
    for value in io:
        _choose("io type", value, IO_TYPES)
    if not formats:
        raise ExportError(f"no format to export; choose from {', '.join(FORMATS)}")
    if "litert" not in formats and quantizations != ["none"]:
        raise ExportError(
            f"a SavedModel is not quantised (asked: {', '.join(quantizations)}); "
            "add --format litert for quantised models, or use --quantize none"
        )
    if "int8" in io and ("litert" not in formats or "int8" not in quantizations):
        raise ExportError(
            "int8 inputs and outputs need a full-integer model: add "
            "--format litert --quantize int8 (or use --io float32)"
        )
    specs = []
    if "saved_model" in formats:
        specs.append(ExportSpec.make("saved_model"))
    if "litert" in formats:
        for quantize in quantizations:
            for io_type in io if quantize == "int8" else ["float32"]:
                specs.append(ExportSpec.make("litert", quantize, io_type))
    specs = list(dict.fromkeys(specs))
    return sorted(specs, key=lambda s: VARIANTS.index(s.variant))


# --------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------
def row_name(stage, variant):
    """`'<stage>@<variant>'`, the result row of an exported model."""
    return f"{stage}{ROW_SEPARATOR}{variant}"


def split_row_name(name):
    """`(stage, variant)` of a row name; `(name, None)` for a stage's own row."""
    stage, separator, variant = str(name).partition(ROW_SEPARATOR)
    return (stage, variant) if separator else (stage, None)


def is_export_row(row):
    """True for the row of an exported model."""
    return split_row_name(row.get("stage", ""))[1] is not None


def stage_export_dir(run_dir, stage):
    return Path(run_dir) / EXPORT_DIR / stage


def export_path(run_dir, stage, spec):
    """Where a variant of a stage's model is exported."""
    return stage_export_dir(run_dir, stage) / spec.filename


def row_path(run_dir, stage, variant):
    """Where a variant's result row is kept."""
    return stage_export_dir(run_dir, stage) / f"{variant}.json"


def model_path(run_dir, stage):
    """The stage's trained model, the source of its exports."""
    return RunFolder(run_dir).model_file(stage)


def file_sha256(path):
    """The SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def path_size(path):
    """Bytes of a file, or of all files under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# --------------------------------------------------------------------------
# Reading exports
# --------------------------------------------------------------------------
def read_export_rows(run_dir, stage_order=STAGES):
    """The rows of a run's current exports, in stage then variant order.

    A row is left out when its exported file is gone or its source model
    has changed since (another training of the stage).

    Args:
        run_dir: a run folder.
        stage_order: stage names in the order their exports should come;
            stages not in it follow, sorted.

    Returns:
        A list of row dicts (as in `results.json`).
    """
    base = Path(run_dir) / EXPORT_DIR
    if not base.is_dir():
        return []
    order = list(stage_order)
    stages = sorted(
        (p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda s: (order.index(s) if s in order else len(order), s),
    )
    rows = []
    for stage in stages:
        model = model_path(run_dir, stage)
        digest = None
        for variant in VARIANTS:
            try:
                row = atomic.read_json(row_path(run_dir, stage, variant))
            except ValueError:
                row = None  # A torn file from another writer: skip it.
            if not isinstance(row, dict):
                continue
            if not (Path(run_dir) / row.get("file", "")).exists() or not row.get("file"):
                continue
            if digest is None:
                digest = file_sha256(model) if model.is_file() else ""
            if row.get("source_sha256") != digest:
                continue
            rows.append(row)
    return rows
