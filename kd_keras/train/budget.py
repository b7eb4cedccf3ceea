"""`kd_keras run --budget`: a run sized to a time budget.

The run's models are calibrated as `--dry-run` calibrates them
(`kd_keras.train.estimate.calibrate`); `size_to_budget`, a pure function of
the measured step times, the image counts and the budget, then chooses the
epochs and, below a floor, the training images.
"""

import dataclasses
import math
import os
import time

from kd_keras.train.estimate import (
    STAGE_ORDER,
    calibrated,
    clock,
    stage_epoch_seconds,
    stage_setup_seconds,
)
from kd_keras.validation import check_budget_strategy, validation_reuses_teacher_logits

# --budget: below this many student epochs the training images shrink
# instead (at most the preset's epochs); never fewer than this many images
# per class.
MIN_BUDGET_EPOCHS = 5
MIN_BUDGET_IMAGES_PER_CLASS = 10
# Per stage epoch: saving the checkpoint, the history and the best model,
# and rebuilding the input pipeline; not in the step times.
EPOCH_OVERHEAD_S = 1.0
# Once per run: reading the data, building the models, the report and plots.
RUN_OVERHEAD_S = 15.0
# What is left of it once the teacher's stage is done: the report, the plots
# and the process's exit (about 1 s and 3 s in a quick run on 2 cores).
REPORT_OVERHEAD_S = 5.0
STUDENT_STAGES = ("student_baseline", "student_distilled")


def size_to_budget(
    budget_seconds,
    measured,
    trace,
    *,
    train_images,
    val_images,
    test_images,
    num_classes,
    batch_size,
    teacher_epochs,
    student_epochs,
    spent_seconds=0.0,
    min_epochs=MIN_BUDGET_EPOCHS,
    min_images_per_class=MIN_BUDGET_IMAGES_PER_CLASS,
    epoch_overhead_s=EPOCH_OVERHEAD_S,
    run_overhead_s=RUN_OVERHEAD_S,
    teacher_logits_reused=False,
):
    """The epochs and training images that fit a run into a time budget.

    A pure function of the calibration (`calibrate`'s per-step seconds
    `measured` and tracing seconds `trace`) and the run's sizes; nothing is
    timed here.

    Each stage costs its epochs x (training steps + validation pass + a
    fixed `epoch_overhead_s`), plus its tracing once and the evaluation of
    its model on the validation and test images at its end; the run adds
    `run_overhead_s` once (data, models, report) and `spent_seconds`. The
    students' epochs are the largest that fit (up to 1000), the teacher's
    keep the preset's ratio `teacher_epochs / student_epochs`
    (`teacher_epochs` 0 = a reused teacher, not trained); what is left is
    filled with whole teacher epochs (the two students' epochs stay equal,
    so one more of theirs costs an epoch of every stage, a teacher's only
    its own). If fewer than
    `min_epochs` (at most the preset's `student_epochs`) would fit, the
    students train `min_epochs` epochs and the training images shrink, a
    whole number per class, to the most that fit.

    Args:
        budget_seconds: the whole run's wall time asked for.
        spent_seconds: already spent (data loading, the calibration).
        teacher_logits_reused: the distilled stage computes the teacher's
            validation logits once (`validation_reuses_teacher_logits`).

    Returns:
        A dict: `teacher_epochs`, `student_epochs`, `train_images`,
        `train_per_class` (None if the images were not reduced),
        `predicted_seconds` (the whole run, `spent_seconds` included),
        `min_student_epochs` (the floor) and `stages` (per stage: epochs,
        epoch_seconds, total_seconds = epochs x epoch_seconds + setup_seconds,
        and evaluation_seconds, the model's evaluation at the stage's end).

    Raises:
        ConfigError: not even `min_epochs` on `min_images_per_class`
            images a class fit; the message says how long those need.
    """
    from kd_keras.errors import ConfigError

    max_epochs = 1000
    ratio = teacher_epochs / student_epochs
    floor = max(1, min(min_epochs, student_epochs))
    val_batches = math.ceil(val_images / batch_size) if val_images else 0
    test_batches = math.ceil(test_images / batch_size) if test_images else 0
    t_fwd, s_fwd = measured["teacher_forward_batch_s"], measured["student_forward_batch_s"]
    # Each model is evaluated on the validation and test images at its stage's end.
    evaluations = {
        stage: (val_batches + test_batches) * forward
        for stage, forward in zip(STAGE_ORDER, (t_fwd if teacher_epochs else 0.0, s_fwd, s_fwd))
    }
    evaluation = sum(evaluations.values())
    setup = stage_setup_seconds(trace, val_batches * t_fwd if teacher_logits_reused else 0.0)

    def plan(images, epochs, extra_teacher=0):
        per_epoch = stage_epoch_seconds(
            measured,
            math.ceil(images / batch_size),
            val_batches,
            epoch_overhead_s,
            teacher_logits_reused=teacher_logits_reused,
        )
        counts = {
            "teacher": min(max_epochs, max(1, round(ratio * epochs)) + extra_teacher)
            if teacher_epochs
            else 0,
            "student_baseline": epochs,
            "student_distilled": epochs,
        }
        stages = {
            stage: {
                "epochs": counts[stage],
                "epoch_seconds": round(per_epoch[stage], 2) if counts[stage] else 0.0,
                "total_seconds": round(
                    counts[stage] * per_epoch[stage] + (setup[stage] if counts[stage] else 0.0),
                    1,
                ),
                "setup_seconds": round(setup[stage], 2) if counts[stage] else 0.0,
                "evaluation_seconds": round(evaluations[stage], 2),
            }
            for stage in STAGE_ORDER
        }
        fixed = spent_seconds + run_overhead_s + evaluation
        total = fixed + sum(s["total_seconds"] for s in stages.values())
        return total, stages

    def most_epochs(images):
        low, high = 0, max_epochs  # The largest epochs whose plan fits (0: none).
        while low < high:
            middle = (low + high + 1) // 2
            if plan(images, middle)[0] <= budget_seconds:
                low = middle
            else:
                high = middle - 1
        return low

    images, per_class = train_images, None
    epochs = most_epochs(images)
    if epochs < floor:
        epochs = floor
        full_per_class = train_images // num_classes
        low, high = min_images_per_class, full_per_class
        if plan(low * num_classes, floor)[0] > budget_seconds:
            needed = plan(low * num_classes, floor)[0]
            raise ConfigError(
                f"--budget of {budget_seconds:.0f}s is too short: even {floor} epochs on "
                f"{min_images_per_class} images a class need about {needed:.0f}s on this "
                f"machine; give a longer --budget or a smaller model"
            )
        while low < high:  # The most images a class that fit at `floor` epochs.
            middle = (low + high + 1) // 2
            if plan(middle * num_classes, floor)[0] <= budget_seconds:
                low = middle
            else:
                high = middle - 1
        per_class = low
        images = per_class * num_classes
    extra = 0  # Whole teacher epochs in what the students' epochs leave.
    if teacher_epochs:
        teacher = plan(images, epochs)[1]["teacher"]["epochs"]
        while teacher + extra < max_epochs and plan(images, epochs, extra + 1)[0] <= budget_seconds:
            extra += 1
    total, stages = plan(images, epochs, extra)
    return {
        "teacher_epochs": stages["teacher"]["epochs"],
        "student_epochs": epochs,
        "train_images": images,
        "train_per_class": per_class,
        "predicted_seconds": round(total, 1),
        "min_student_epochs": floor,
        "stages": stages,
    }


def replan_students(
    plan,
    *,
    teacher_seconds,
    elapsed_seconds,
    warmup_epochs=0,
    report_overhead_s=REPORT_OVERHEAD_S,
):
    """The students' epochs re-sized once the teacher's stage has run.

    A plan rests on a calibration of a few steps a model, and a shared CPU's
    speed drifts over seconds: a calibration that catches a slow moment
    plans too few epochs, a fast one too many. The teacher's stage is
    minutes of the run's own epochs, so its wall time against the plan's
    prediction for it (`total_seconds` + `evaluation_seconds`) is the
    machine's real speed, `speed`; the students' stages, as planned, scaled
    by it, then get the most equal epochs that fit the budget's time left
    (`budget_seconds` - `elapsed_seconds` - `report_overhead_s`). They never
    get fewer than the plan's floor (`min_student_epochs`, at most its
    epochs) or than `warmup_epochs` + 1: a budget that cannot hold those is
    overrun, not turned into a meaningless comparison.

    A pure function: nothing is timed here.

    Args:
        plan: `plan_budget`'s plan (as saved in `budget.json`).
        teacher_seconds: the wall time of the teacher's stage: training,
            saving and evaluating it.
        elapsed_seconds: the run's time since its budget started counting.

    Returns:
        A dict: `after` ("teacher"), `elapsed_seconds`, `teacher_seconds`,
        `teacher_predicted_seconds`, `speed`, `planned_student_epochs`,
        `student_epochs`, `predicted_seconds` (the whole run's, now) and
        `over_budget_seconds` (above 0 only when the floor does not fit).
    """
    stages = plan["stages"]
    teacher = stages["teacher"]
    predicted_teacher = teacher["total_seconds"] + teacher["evaluation_seconds"]
    speed = teacher_seconds / predicted_teacher if predicted_teacher > 0 else 1.0
    planned = plan["student_epochs"]
    floor = max(1, warmup_epochs + 1, min(plan.get("min_student_epochs", planned), planned))

    def students_seconds(epochs):
        return speed * sum(
            epochs * stages[stage]["epoch_seconds"]
            + stages[stage]["setup_seconds"]
            + stages[stage]["evaluation_seconds"]
            for stage in STUDENT_STAGES
        )

    left = plan["budget_seconds"] - elapsed_seconds - report_overhead_s
    low, high = floor, 1000  # The most epochs that fit, at least the floor.
    while low < high:
        middle = (low + high + 1) // 2
        if students_seconds(middle) <= left:
            low = middle
        else:
            high = middle - 1
    predicted = elapsed_seconds + students_seconds(low) + report_overhead_s
    return {
        "after": "teacher",
        "elapsed_seconds": round(elapsed_seconds, 1),
        "teacher_seconds": round(teacher_seconds, 1),
        "teacher_predicted_seconds": round(predicted_teacher, 1),
        "speed": round(speed, 3),
        "planned_student_epochs": planned,
        "student_epochs": low,
        "predicted_seconds": round(predicted, 1),
        "over_budget_seconds": round(max(0.0, predicted - plan["budget_seconds"]), 1),
    }


def check_budget_plan(plan, config):
    """Raises `ConfigError` before a run starts if `plan` is not a plan
    `replan_students` can use for `config` (`run_pipeline`'s `budget_plan`):
    a dict from `plan_budget`, for a config with a `budget`."""
    from kd_keras.errors import ConfigError

    if config.budget is None:
        raise ConfigError(
            "budget_plan is for a config sized to a budget, and this config has no "
            "budget: size it with kd_keras.train.budget.plan_budget, or drop budget_plan"
        )
    if not isinstance(plan, dict):
        raise ConfigError(
            f"budget_plan must be the dict kd_keras.train.budget.plan_budget returns, "
            f"got {type(plan).__name__}"
        )
    missing = [
        key for key in ("budget_seconds", "started_unix", "student_epochs") if key not in plan
    ]
    stages = plan.get("stages") if isinstance(plan.get("stages"), dict) else {}
    stage_keys = ("epochs", "epoch_seconds", "total_seconds", "setup_seconds", "evaluation_seconds")
    missing += [
        f"stages.{stage}.{key}"
        for stage in STAGE_ORDER
        for key in stage_keys
        if not isinstance(stages.get(stage), dict) or key not in stages[stage]
    ]
    if missing:
        raise ConfigError(
            f"budget_plan is not a plan from kd_keras.train.budget.plan_budget (missing "
            f"{', '.join(missing[:4])}): pass the plan plan_budget returned"
        )
    planned = (stages["teacher"]["epochs"], plan["student_epochs"])
    sized = (0 if config.teacher else config.teacher_epochs, config.student_epochs)
    if planned != sized:
        raise ConfigError(
            f"budget_plan was made for {planned[0]} teacher and {planned[1]} student epochs, "
            f"the config has {sized[0]} and {sized[1]}: pass the config plan_budget "
            "returned with its plan"
        )


def format_replan(replan):
    """The printed line of a re-plan (`replan_students`)."""
    change = (
        f"{replan['student_epochs']} epochs each (planned {replan['planned_student_epochs']})"
        if replan["student_epochs"] != replan["planned_student_epochs"]
        else f"{replan['student_epochs']} epochs each, as planned"
    )
    over = replan.get("over_budget_seconds", 0.0)
    return (
        f"Budget re-planned: the teacher's stage took {clock(replan['teacher_seconds'])} "
        f"(planned {clock(replan['teacher_predicted_seconds'])}, {replan['speed']:.2f}x): "
        f"students {change}, predicted {clock(replan['predicted_seconds'])} in all"
        + (
            f", {clock(over)} over the budget (the students' floor of "
            f"{replan['student_epochs']} epochs)"
            if over > 0
            else ""
        )
    )


def plan_budget(config, data=None, spent_seconds=0.0, calibration_steps=3):
    """Sizes `config` to its `budget` (`kd_keras run --budget 10m`).

    Calibrates the run's models as `--dry-run` does (`calibrate`), then
    chooses the epochs and, below a floor, the training images with
    `size_to_budget`. The calibration's own time counts as spent.

    Args:
        config: a `RunConfig` with `budget` set.
        data: `kd_keras.data.splits.data_summary(config)`, if known.
        spent_seconds: seconds the run already spent before this call.

    Returns:
        `(sized, plan)`: the config with the chosen `teacher_epochs`,
        `student_epochs`, `train_per_class` (if reduced) and resolved
        precisions; and the plan (`size_to_budget`'s dict plus `budget`,
        `budget_seconds`, `calibration`, `precision`, `teacher_precision`,
        and `started_unix`, the `time.time()` at which the budget started
        counting). Give both to `run_pipeline(sized, out, budget_plan=plan)`
        to have the students re-planned after the teacher's stage.
    """
    from kd_keras.validation import parse_budget

    budget_seconds = parse_budget(config.budget)
    started_unix = time.time() - spent_seconds  # When the budget started counting.
    start = time.perf_counter()
    resolved, choice, machine, data, measured, trace, _, calibration = calibrated(
        config, data, calibration_steps
    )
    sizes = size_to_budget(
        budget_seconds,
        measured,
        trace,
        train_images=data["train_images"],
        val_images=data["val_images"],
        test_images=data["test_images"],
        num_classes=data["num_classes"],
        batch_size=resolved.batch_size,
        teacher_epochs=0 if resolved.teacher else resolved.teacher_epochs,
        student_epochs=resolved.student_epochs,
        spent_seconds=spent_seconds + (time.perf_counter() - start),
        teacher_logits_reused=validation_reuses_teacher_logits(resolved),
    )
    changes = {"student_epochs": sizes["student_epochs"]}
    if not resolved.teacher:
        changes["teacher_epochs"] = sizes["teacher_epochs"]
    if sizes["train_per_class"] is not None:
        changes["train_per_class"] = sizes["train_per_class"]
    sized = dataclasses.replace(resolved, **changes).validate()
    plan = {
        "budget": config.budget,
        "budget_seconds": budget_seconds,
        **sizes,
        "precision": resolved.precision,
        "teacher_precision": resolved.teacher_precision,
        "precision_reason": choice.reason,
        "machine": machine.describe(),
        "calibration": calibration,
        "started_unix": round(started_unix, 3),
    }
    return sized, plan


def _process_seconds():
    """Wall seconds since this process started (Linux; 0 elsewhere)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as file:
            started = int(file.read().rsplit(")", 1)[1].split()[19]) / ticks
        with open("/proc/uptime") as file:
            return max(0.0, float(file.read().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


def size_run_to_budget(config, out_dir, *, resume=False, flag_given=None, log=print):
    """`kd_keras run --budget`: `(sized config, plan)`, the plan logged (one
    line per stage).

    A resumed run keeps the sizes saved in its `config.json` (plan `None`);
    asking a budget again on `--resume` (`flag_given`) is refused. Where CIFAR-10
    comes from is checked before the calibration (the CLI checks the run
    folder before this). The time this process has already run (imports,
    data) counts against the budget.
    """
    from kd_keras.config import data_kind
    from kd_keras.data.cifar10 import resolve_source
    from kd_keras.errors import ConfigError
    from kd_keras.run_folder import RunFolder
    from kd_keras.train.speed import apply_threading

    if resume and RunFolder(out_dir).config_file.is_file():
        if flag_given is not None:
            raise ConfigError(
                f"--budget sizes a new run; the run in '{out_dir}' keeps the epochs and "
                "images in its config.json: drop --budget to resume it"
            )
        return config, None
    try:
        check_budget_strategy(config.budget, config.strategy)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if data_kind(config.data) == "cifar10":
        resolve_source(config.data)  # A missing archive fails here, not after calibrating.
    apply_threading(config)  # Before TensorFlow starts, as in a run.
    sized, plan = plan_budget(config, spent_seconds=_process_seconds())
    log(format_budget_plan(plan))
    return sized, plan


def format_budget_plan(plan):
    """The printed plan of a budgeted run: one line per stage."""
    images = f"{plan['train_images']:,} training images" + (
        f" ({plan['train_per_class']} a class, reduced to fit)" if plan["train_per_class"] else ""
    )
    lines = [
        f"Budget {plan['budget']} ({clock(plan['budget_seconds'])}): {images}, "
        f"predicted {clock(plan['predicted_seconds'])} in all "
        f"(calibrated in {plan['calibration']['seconds']:.0f} s)"
    ]
    for stage, row in plan["stages"].items():
        if row["epochs"]:
            lines.append(
                f"  {stage:<18} {row['epochs']:>4} epochs x {row['epoch_seconds']:.1f}s "
                f"= {clock(row['total_seconds'])}"
            )
        else:
            lines.append(f"  {stage:<18} reused, not trained")
    return "\n".join(lines)
