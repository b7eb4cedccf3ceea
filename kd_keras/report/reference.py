"""The reference table kd-keras reproduces, as plain data, and a run's
rows side by side with it.

The reference applies Hinton, Vinyals and Dean's distillation
(arXiv:1503.02531; the paper itself has no CIFAR-10 ResNet experiment) to
CIFAR-10 with a ResNet teacher of depth 30 and a student of depth 15 of
width 16, T = 4, alpha = 0.3, on the full 10,000-image test set and a
5,000-image validation split. Its epochs and schedule are not part of the
table, so they are not compared. Its losses are not comparable with a run's: a run reports
each model's own cross-entropy, while the reference's distilled "test loss"
(0.6728, above its baseline's 0.4374) looks like the blended distillation
loss; the comparison therefore puts accuracies side by side and gives the
run's own losses alone.

Only runs of the reference's shape are compared (`comparison_problem`):
CIFAR-10 data (so 10 classes) and ResNet teacher and student; a run on
other data or with other architectures gets one line saying why instead.

Keras-free: `python -m kd_keras report RUN --reference` prints
`format_reference_table(rows, config)`.
"""

from kd_keras.errors import ConfigError
from kd_keras.run_folder import RunFolder

REFERENCE = {
    "name": "Hinton-style distillation on CIFAR-10, ResNet depth 30 -> 15, T = 4, alpha = 0.3",
    "setting": {
        "teacher": None,
        "teacher_model": None,
        "student_model": None,
        "teacher_depth": 30,
        "student_depth": 15,
        "teacher_width": 16,
        "student_width": 16,
        "temperature": 4.0,
        "alpha": 0.3,
        "image_size": None,
        "val_size": 5000,
        "train_per_class": None,
        "val_per_class": None,
        "test_per_class": None,
    },
    "rows": {
        "teacher": {
            "test_accuracy": 0.9053,
            "test_loss": 0.3595,
            "val_accuracy": 0.894,
            "val_loss": 0.3552,
        },
        "student_baseline": {
            "test_accuracy": 0.8907,
            "test_loss": 0.4374,
            "val_accuracy": 0.8852,
            "val_loss": 0.4283,
        },
        "student_distilled": {
            "test_accuracy": 0.9028,
            "test_loss": 0.6728,
            "val_accuracy": 0.8944,
            "val_loss": 0.6332,
        },
    },
}


def _training_time(item):
    seconds = item["train_seconds"]
    if item["epochs"] == 0:
        return "reused"
    if seconds is None:
        return ""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s"


def setting_differences(config, reference=REFERENCE):
    """The reference's settings that a run's config does not match.

    Args:
        config: a `RunConfig` or a dict of its fields.
        reference: a reference dict shaped like `REFERENCE`.

    Returns:
        A list of `"field: run value (reference value)"` strings, empty when
        the run is the reference's setting (CIFAR-10 data included).
    """
    from kd_keras.config import data_kind
    from kd_keras.data.sizes import SIZE_FIELDS, cifar10_sizes

    fields = config if isinstance(config, dict) else config.to_dict()
    # Sizes compare resolved (a run records None/"all" as numbers).
    try:
        sizes = (cifar10_sizes(fields), cifar10_sizes(reference["setting"]))
    except ValueError:
        sizes = ({}, {})
    differences = [
        f"{name}: {fields.get(name)!r} (reference {value!r})"
        for name, value in reference["setting"].items()
        if (sizes[0].get(name, fields.get(name)) if name in SIZE_FIELDS else fields.get(name))
        != (sizes[1].get(name, value) if name in SIZE_FIELDS else value)
    ]
    if data_kind(fields.get("data")) != "cifar10":
        differences.insert(0, f"data: {fields.get('data')!r} (reference CIFAR-10)")
    return differences


def comparison_problem(config):
    """Why a run cannot be set next to the reference, or `None` if it can.

    The reference is CIFAR-10 (10 classes) with ResNet teacher and student;
    a run on other data or with other architectures would be compared with
    numbers it could never reach (an own-data run came out 57 points
    "below"). Depths, widths, sizes and epochs may differ: they are listed
    under the table.

    Args:
        config: a `RunConfig`, a dict of its fields, or `None` (no
            config.json).
    """
    from kd_keras.config import data_kind
    from kd_keras.models.specs import parse_model_spec

    if config is None:
        return "the run folder has no config.json, so its data and models are unknown"
    fields = config if isinstance(config, dict) else config.to_dict()
    if data_kind(fields.get("data")) != "cifar10":
        return (
            f"the run's data {fields.get('data')!r} is not CIFAR-10, and the reference "
            "is a CIFAR-10 result"
        )
    for role in ("teacher", "student"):
        spec = fields.get(f"{role}_model")
        if spec is None:
            continue
        try:
            kind = parse_model_spec(spec, role=role)["kind"]
        except ValueError:
            kind = None
        if kind != "resnet":
            return (
                f"the run's {role} is {spec!r}, not a ResNet, and the reference "
                "compares ResNet teacher and student"
            )
    return None


def check_comparable(config):
    """Raises `ConfigError` (one line) unless `comparison_problem(config)`
    is `None`."""
    problem = comparison_problem(config)
    if problem is not None:
        raise ConfigError(
            f"--reference compares CIFAR-10 runs with ResNet teacher and student only: "
            f"{problem}; leave out --reference"
        )


def compare_with_reference(rows, reference=REFERENCE):
    """A run's accuracies next to the reference's, stage by stage.

    Args:
        rows: the run's stage rows (`load_stage_rows`); rows of stages the
            reference does not have (exports, tuned stages) are skipped.
        reference: a reference dict shaped like `REFERENCE`.

    Returns:
        A list of dicts with `stage`, `depth`, `epochs`, `test_accuracy`, `reference_test_accuracy`,
        `test_difference_points`, the same three for validation,
        `test_loss` (the run's own cross-entropy) and `train_seconds`, in the
        reference's stage order; then, when both students are present, a
        `gain` row with the distilled student's lead over the baseline
        (in points, ours and the reference's).
    """
    by_stage = {row["stage"]: row for row in rows}
    compared = []
    for stage, ref in reference["rows"].items():
        row = by_stage.get(stage)
        if row is None:
            continue
        compared.append(
            {
                "stage": stage,
                "depth": row.get("depth"),
                "epochs": row.get("epochs"),
                "test_accuracy": row["test_accuracy"],
                "reference_test_accuracy": ref["test_accuracy"],
                "test_difference_points": 100 * (row["test_accuracy"] - ref["test_accuracy"]),
                "val_accuracy": row["val_accuracy"],
                "reference_val_accuracy": ref["val_accuracy"],
                "val_difference_points": 100 * (row["val_accuracy"] - ref["val_accuracy"]),
                "test_loss": row.get("test_loss"),
                "train_seconds": row.get("train_seconds"),
            }
        )
    present = {row["stage"]: row for row in compared}
    if "student_baseline" in present and "student_distilled" in present:
        gain = {}
        for split in ("test", "val"):
            ours = (
                present["student_distilled"][f"{split}_accuracy"]
                - present["student_baseline"][f"{split}_accuracy"]
            )
            ref = (
                reference["rows"]["student_distilled"][f"{split}_accuracy"]
                - reference["rows"]["student_baseline"][f"{split}_accuracy"]
            )
            gain[f"{split}_points"] = 100 * ours
            gain[f"reference_{split}_points"] = 100 * ref
            gain[f"{split}_difference_points"] = 100 * (ours - ref)
        compared.append({"stage": "gain", **gain})
    return compared


def format_reference_table(rows, config, reference=REFERENCE):
    """A Markdown table of a run next to the reference (docs/results.md shows it).

    Args:
        rows: the run's stage rows.
        config: the run's `RunConfig` (or a dict of its fields), or `None`;
            any setting that differs from the reference's is listed.
        reference: a reference dict shaped like `REFERENCE`.

    Returns:
        The table as a string: accuracies as ours / reference / difference in
        points, the run's own test cross-entropy and training time, a gain
        row, then one line per differing setting.
    """
    lines = [
        "| model | test acc | reference | difference (points) | val acc | reference "
        "| difference (points) | test loss (own CE) | training time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for item in compare_with_reference(rows, reference):
        if item["stage"] == "gain":
            lines.append(
                f"| **gain of distillation** (points) | **{item['test_points']:+.2f}** "
                f"| {item['reference_test_points']:+.2f} "
                f"| {item['test_difference_points']:+.2f} | {item['val_points']:+.2f} "
                f"| {item['reference_val_points']:+.2f} | {item['val_difference_points']:+.2f} "
                "| | |"
            )
            continue
        label = item["stage"].replace("_", " ")
        if item["depth"] is not None:
            label += f" (depth {item['depth']})"
        loss = "" if item["test_loss"] is None else f"{item['test_loss']:.3f}"
        lines.append(
            f"| {label} | {item['test_accuracy']:.4f} | {item['reference_test_accuracy']:.4f} "
            f"| {item['test_difference_points']:+.2f} "
            f"| {item['val_accuracy']:.4f} | {item['reference_val_accuracy']:.4f} "
            f"| {item['val_difference_points']:+.2f} "
            f"| {loss} | {_training_time(item)} |"
        )
    if config is None:
        lines += ["", "Settings: unknown (no config.json), not checked against the reference."]
        return "\n".join(lines)
    differences = setting_differences(config, reference)
    if differences:
        lines.append("")
        lines.append("Settings that differ from the reference: " + "; ".join(differences) + ".")
    return "\n".join(lines)


def reference_table_of(run_dir, reference=REFERENCE):
    """`format_reference_table` of a run folder's stages and config, or
    `None` for a run not of the reference's shape (`comparison_problem`)."""
    from kd_keras.report.results import load_stage_rows

    config = RunFolder(run_dir).config()
    if comparison_problem(config) is not None:
        return None
    return format_reference_table(load_stage_rows(run_dir), config, reference)
