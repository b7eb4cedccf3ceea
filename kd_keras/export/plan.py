"""Checking an export request against a run folder, before any work.

Keras-free (like `kd_keras.export.spec`, which names the variants and their
files): the CLI refuses a bad request before TensorFlow starts.
`plan_exports` says which variants to export; `export_status` tells a
complete variant (its row written after its file) from the leftovers of an
interrupted export; a read-only run folder is refused (`check_writable`).
"""

import os
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import ExportError
from kd_keras.export.spec import (
    export_path,
    file_sha256,
    model_path,
    name_list,
    path_size,
    row_path,
    stage_export_dir,
)
from kd_keras.layout import EXPORT_DIR
from kd_keras.run_folder import RunFolder
from kd_keras.stages import STAGES


def _positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        more = " or None" if allow_none else ""
        raise ExportError(f"{name} must be an int >= 1{more}, got {value!r}")
    return value


def validate_options(
    *,
    calibration_images=256,
    max_images=None,
    batch_size=100,
    latency_repeats=200,
    threads=None,
    seed=None,
):
    """Raises `ExportError`, naming the bad value, for an invalid number."""
    _positive_int("calibration_images", calibration_images)
    _positive_int("max_images", max_images, allow_none=True)
    _positive_int("batch_size", batch_size)
    _positive_int("latency_repeats", latency_repeats)
    _positive_int("threads", threads, allow_none=True)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ExportError(f"seed must be an int >= 0 or None, got {seed!r}")


def read_only_error(run_dir):
    """The `ExportError` for a run folder that cannot be written."""
    return ExportError(
        f"'{run_dir}' is read-only, and an export writes into its run folder (export/, "
        "results.csv); copy the run to a writable place and export the copy: "
        f"cp -r '{run_dir}' COPY && python -m kd_keras export COPY ..."
    )


def check_writable(run_dir, stages=()):
    """Raises `read_only_error` unless the run folder, and the export folders
    of `stages` that exist, can be written (`os.access`: a read-only file
    system or a folder without write permission)."""
    folders = [Path(run_dir), Path(run_dir) / EXPORT_DIR]
    folders += [stage_export_dir(run_dir, stage) for stage in stages]
    if any(folder.is_dir() and not os.access(folder, os.W_OK) for folder in folders):
        raise read_only_error(run_dir)


def run_stages(run_dir):
    """Stage names a run folder knows: the pipeline's and any added ones."""
    extra = {p.stem for p in RunFolder(run_dir).stages_dir.glob("*.json")}
    return list(STAGES) + sorted(extra - set(STAGES))


# What `export_status` says of one variant of a stage in a run folder.
ABSENT, PARTIAL, COMPLETE, STALE = "absent", "partial", "complete", "stale"


def export_status(run_dir, stage, spec, digest=None):
    """Whether a variant of a stage is exported, by its completion marker.

    A variant is complete once its row (`export/<stage>/<variant>.json`,
    written atomically after the file is fully written and measured) names
    its file, which exists with the size the row records. Anything else
    left by an interrupted export (a file without its row, a row without
    its file) is partial: the next export removes and redoes it.

    Args:
        run_dir: the run folder.
        stage: the stage.
        spec: the `ExportSpec`.
        digest: the SHA-256 of the stage's model (computed if None).

    Returns:
        `ABSENT`, `PARTIAL`, `COMPLETE` (exported from the stage's current
        model) or `STALE` (complete, but from a model since trained again).
    """
    run_dir = Path(run_dir)
    target = export_path(run_dir, stage, spec)
    row_file = row_path(run_dir, stage, spec.variant)
    if not (os.path.lexists(target) or os.path.lexists(row_file)):
        return ABSENT
    try:
        row = None if row_file.is_symlink() else atomic.read_json(row_file)
    except ValueError:
        row = None  # Torn or emptied: not a marker.
    if not isinstance(row, dict) or row.get("file") != str(target.relative_to(run_dir)):
        return PARTIAL
    if target.is_symlink() or not target.exists():
        return PARTIAL
    if spec.format == "saved_model" and not (target / "saved_model.pb").is_file():
        return PARTIAL
    if row.get("size_bytes") != path_size(target):
        return PARTIAL
    if digest is None:
        source = model_path(run_dir, stage)
        digest = file_sha256(source) if source.is_file() else ""
    return COMPLETE if row.get("source_sha256") == digest else STALE


class ExportPlan(list):
    """The `(stage, spec)` pairs to export; `skipped` holds the pairs of the
    request that are complete already (`export_status`), `requested` all of
    them in the request's order."""

    def __init__(self, pairs=(), skipped=(), requested=None):
        super().__init__(pairs)
        self.skipped = list(skipped)
        self.requested = list(pairs if requested is None else requested)


def _check_stages(run_dir, stages):
    """Raises `ExportError` for a stage the run does not have, has not
    finished, or has no model file of."""
    known = run_stages(run_dir)
    for stage in stages:
        if stage not in known:
            raise ExportError(
                f"stage '{stage}' is not in run '{run_dir}'; its stages are {', '.join(known)}"
            )
        if not RunFolder(run_dir).is_complete(stage):
            raise ExportError(
                f"run '{run_dir}' has not finished stage '{stage}' (no "
                f"stages/{stage}.json); finish it first: python -m kd_keras "
                f"run --resume --out {run_dir}"
            )
        if not model_path(run_dir, stage).is_file():
            raise ExportError(
                f"stage '{stage}' of run '{run_dir}' has no model file "
                f"models/{stage}.keras to export"
            )


def plan_exports(run_dir, stages=("student_distilled",), specs=(), *, overwrite=False):
    """Checks an export request against a run folder, before any work.

    Nothing is changed. Without `overwrite`, a variant already complete
    (`export_status`) is skipped, so the same command continues an
    interrupted export; a partial one is planned again (`export_run`
    removes its leftovers).

    Args:
        run_dir: a kd_keras run folder.
        stages: stage names to export.
        specs: `ExportSpec`s (see `export_specs`).
        overwrite: redo every variant, complete or not.

    Returns:
        An `ExportPlan`: a list of `(stage, spec)` pairs to export, with the
        complete ones in `.skipped`.

    Raises:
        ExportError: not a run folder, a stage not in the run, a stage the
            run has not finished, no model file, nothing asked, or (without
            `overwrite`) a complete export of an older model of its stage.
    """
    run_dir = Path(run_dir)
    if not RunFolder(run_dir).config_file.is_file():
        raise ExportError(
            f"'{run_dir}' is not a kd_keras run folder (no config.json); "
            "pass the --out folder of a run"
        )
    stages = name_list(stages, "stages")
    if not stages:
        raise ExportError("no stage to export; pass --stage, e.g. student_distilled")
    check_writable(run_dir, stages)
    if not specs:
        raise ExportError("no format to export; pass --format saved_model and/or litert")
    _check_stages(run_dir, stages)
    plan = [(stage, spec) for stage in stages for spec in specs]
    if overwrite:
        return ExportPlan(plan)
    todo, skipped, existing = [], [], []
    digests = {}
    for stage, spec in plan:
        if stage not in digests:
            digests[stage] = file_sha256(model_path(run_dir, stage))
        status = export_status(run_dir, stage, spec, digests[stage])
        if status == COMPLETE:
            skipped.append((stage, spec))
        elif status == STALE:
            existing.append(str(export_path(run_dir, stage, spec).relative_to(run_dir)))
        else:
            todo.append((stage, spec))
    if existing:
        shown = ", ".join(existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        raise ExportError(
            f"{shown} already exist{'s' if len(existing) == 1 else ''} in "
            f"'{run_dir}', exported from an older model of the stage; pass --overwrite "
            f"to replace {'it' if len(existing) == 1 else 'them'}"
        )
    return ExportPlan(todo, skipped, plan)
