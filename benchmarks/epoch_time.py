"""A whole pipeline epoch against the step time x steps.

    python -m benchmarks.epoch_time [--epochs 3] [--train-images 2000]
        [--val-images 500] [--test-images 200] [--batch-size 50]
        [--teacher-depth 8] [--student-depth 8] [--teacher-width 8]
        [--student-width 4] [--precision float32] [--teacher-precision float32]
        [--calibration-steps 5] [--out DIR]

Runs the real three-stage pipeline (`kd_keras.train.pipeline.run_pipeline`:
input pipeline, training steps, validation, checkpoint, history) on
generated data of smoke size (random uint8 images in a `.npz` file, so no
dataset is needed) and clocks every epoch of every stage from inside `fit`:

* `epoch_s`: epoch end to epoch end, without the fixed-batch timings
  between epochs (the first epoch from the start of training, so it holds
  the tracing);
* `steps_s`: first training batch's start to last training batch's end;
* `rest_s`: `epoch_s - steps_s` (validation, checkpoint, history, the input
  pipeline's restart, callbacks).

The fixed-batch step it is compared with is timed at the same moments:
before a stage's first epoch and after every epoch (outside the epoch's
clock), it times `--calibration-steps` rounds of the same config's steps
as `--dry-run` does (`kd_keras.train.estimate.calibration_calls`: training
steps on one fixed batch, no input pipeline, the models in turns), and
each epoch is set against the mean of the timings just before and just
after it. A virtual machine's speed drifts by 10 % and more over minutes;
one calibration after the whole run gave a stage that drift as overhead,
or hid overhead under it. It reports, per stage, the median epoch (after
the first) and the median of the epochs' own ratios to `step x steps` and
to the full estimate (steps plus the validation pass); with a drifting
step those are not the ratio of the medians. The goal: a pipeline epoch
at most 1.1x the step time x steps. Writes `epoch_time.json` and
`epoch_time.md` into `--out` and prints the table. Measure on idle cores:
a busy machine slows every part unevenly.
"""

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from kd_keras.hardware import enable_onednn_opts

DEFAULT_OUT = "runs/epoch-time"


def get_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.epoch_time",
        description="Wall time of whole pipeline epochs (input pipeline, steps, "
        "validation, checkpoint) against the calibrated step time x steps.",
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs a stage (default 3)")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--teacher-depth", type=int, default=8)
    parser.add_argument("--student-depth", type=int, default=8)
    parser.add_argument("--teacher-width", type=int, default=8)
    parser.add_argument("--student-width", type=int, default=4)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--teacher-precision", default="float32")
    parser.add_argument(
        "--calibration-steps",
        type=int,
        default=5,
        help="rounds of fixed-batch steps timed before a stage and after every epoch (default 5)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(
            f"--epochs must be >= 2 (the first epoch holds the tracing), got {args.epochs}"
        )
    for name in ("train_images", "val_images", "test_images", "batch_size", "calibration_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def write_data(path, train_images, test_images, seed=0):
    """A `.npz` data file of random 32x32 RGB uint8 images, 10 classes."""
    rng = np.random.default_rng(seed)

    def split(count):
        images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        return images, (np.arange(count) % 10).astype("int64")

    (x_train, y_train), (x_test, y_test) = split(train_images), split(test_images)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def make_epoch_clock(records, time_steps):
    """A Keras callback class appending one dict per epoch to `records`.

    `time_steps()` returns fixed-batch step times (`measured_step_times`'s
    dict); it is called when training begins and after every epoch, each
    time outside the epoch's clock, so every epoch has a timing just
    before and just after it (`step_times_before`, `step_times_after`).
    """
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.before = time_steps()
            self.last_end = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.steps_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            end = time.perf_counter()
            after = time_steps()
            records.append(
                {
                    "epoch": epoch + 1,
                    "epoch_s": end - self.last_end,
                    "steps_s": self.steps_end - self.steps_start,
                    "step_times_before": self.before,
                    "step_times_after": after,
                }
            )
            self.before = after
            self.last_end = time.perf_counter()

    return EpochClock


def clocked_fit(fit, stage_records, time_steps):
    """`distribute.fit` with an `EpochClock` last among the callbacks (so
    the checkpoint and history writes of an epoch are inside its time);
    each call's epochs go to a new list in `stage_records`."""

    def wrapped(trainable, dataset, **kwargs):
        records = []
        stage_records.append(records)
        clock = make_epoch_clock(records, time_steps)()
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [clock]
        return fit(trainable, dataset, **kwargs)

    return wrapped


def summarise(stages, steps_per_epoch, val_batches, *, teacher_logits_reused=True):
    """Per stage, over the epochs after the first: each epoch against the
    step x steps timed around it (the mean of the fixed-batch step times
    just before and just after it) and against the dry-run's estimate of
    an epoch from the same times (steps plus the validation pass,
    `kd_keras.train.estimate.stage_epoch_seconds`); the medians of the
    epochs, of those references and of the ratios."""
    from kd_keras.train.estimate import stage_epoch_seconds

    rows = []
    for stage, records in stages.items():
        later = records[1:]
        steps_only, estimates = [], []
        for record in later:
            around = {
                key: (record["step_times_before"][key] + record["step_times_after"][key]) / 2
                for key in record["step_times_before"]
            }
            steps_only.append(stage_epoch_seconds(around, steps_per_epoch, 0, 0.0)[stage])
            estimates.append(
                stage_epoch_seconds(
                    around,
                    steps_per_epoch,
                    val_batches,
                    0.0,
                    teacher_logits_reused=teacher_logits_reused,
                )[stage]
            )
        epochs = [r["epoch_s"] for r in later]
        epoch = statistics.median(epochs)
        steps = statistics.median(r["steps_s"] for r in later)
        rows.append(
            {
                "stage": stage,
                "epochs_timed": len(later),
                "first_epoch_s": round(records[0]["epoch_s"], 3),
                "epoch_s": round(epoch, 3),
                "steps_s": round(steps, 3),
                "rest_s": round(epoch - steps, 3),
                "step_x_steps_s": round(statistics.median(steps_only), 3),
                "estimate_s": round(statistics.median(estimates), 3),
                "epoch_vs_step_x_steps": round(
                    statistics.median(e / r for e, r in zip(epochs, steps_only)), 3
                ),
                "epoch_vs_estimate": round(
                    statistics.median(e / r for e, r in zip(epochs, estimates)), 3
                ),
                "epoch_vs_step_x_steps_each": [round(e / r, 3) for e, r in zip(epochs, steps_only)],
            }
        )
    return rows


def format_rows(rows):
    header = (
        "| stage | epoch s (median, after the 1st) | of which steps s | rest s | "
        "step × steps s (timed around each epoch) | epoch / (step × steps), median of epochs | "
        "dry-run estimate s | epoch / estimate, median of epochs | "
        "1st epoch s |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['epoch_s']:.2f} | {r['steps_s']:.2f} | {r['rest_s']:.2f} | "
            f"{r['step_x_steps_s']:.2f} | {r['epoch_vs_step_x_steps']:.2f}× | "
            f"{r['estimate_s']:.2f} | {r['epoch_vs_estimate']:.2f}× | {r['first_epoch_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = get_args(argv)
    enable_onednn_opts()  # As kd_keras's front ends run TensorFlow.
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    data = out / "data.npz"
    write_data(data, args.train_images + args.val_images, args.test_images)

    import kd_keras  # noqa: F401  (sets KERAS_BACKEND before Keras loads)
    from kd_keras.config import RunConfig
    from kd_keras.train import distribute
    from kd_keras.train.estimate import (
        calibration_calls,
        measured_step_times,
        time_interleaved,
    )
    from kd_keras.train.pipeline import run_pipeline
    from kd_keras.validation import validation_reuses_teacher_logits

    smoke = RunConfig.from_preset("smoke")
    config = dataclasses.replace(  # All the generated images: no per-class subsets.
        smoke,
        data=str(data),
        val_size=args.val_images,
        val_per_class=None,
        train_per_class=None,
        test_per_class=None,
        teacher_depth=args.teacher_depth,
        student_depth=args.student_depth,
        teacher_width=args.teacher_width,
        student_width=args.student_width,
        teacher_epochs=args.epochs,
        student_epochs=args.epochs,
        batch_size=args.batch_size,
        precision=args.precision,
        teacher_precision=args.teacher_precision,
        verbose=2,
    ).validate()
    steps_per_epoch = math.ceil(args.train_images / args.batch_size)
    val_batches = math.ceil(args.val_images / args.batch_size)
    shape = {"input_shape": (32, 32, 3), "num_classes": 10}
    calls = calibration_calls(config, shape, steps_per_epoch)
    time_interleaved(calls, 1)  # Traces every fixed-batch step before the run.
    timing_seconds = []

    def time_steps():
        start = time.perf_counter()
        measured, _ = measured_step_times(time_interleaved(calls, args.calibration_steps))
        timing_seconds.append(time.perf_counter() - start)
        return measured

    fits = []
    unclocked = distribute.fit
    distribute.fit = clocked_fit(unclocked, fits, time_steps)
    start = time.perf_counter()
    try:
        run_pipeline(config, run_dir, overwrite=True)
    finally:
        distribute.fit = unclocked  # Other pipelines in this process run unclocked.
    run_seconds = time.perf_counter() - start - sum(timing_seconds)
    stages = dict(zip(("teacher", "student_baseline", "student_distilled"), fits))
    rows = summarise(
        stages,
        steps_per_epoch,
        val_batches,
        teacher_logits_reused=validation_reuses_teacher_logits(config),
    )
    table = format_rows(rows)
    document = {
        "settings": vars(args),
        "steps_per_epoch": steps_per_epoch,
        "val_batches": val_batches,
        "run_seconds": round(run_seconds, 1),
        "calibration_steps": args.calibration_steps,
        "timing_seconds": round(sum(timing_seconds), 1),
        "epochs": stages,
        "stages": rows,
    }
    (out / "epoch_time.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "epoch_time.md").write_text(
        "# Pipeline epoch against step time x steps\n\n"
        f"{steps_per_epoch} steps of batch {args.batch_size} an epoch, "
        f"{val_batches} validation batches; whole run {run_seconds:.0f} s without the "
        f"fixed-batch timings. Each epoch is set against the step time timed just before "
        f"and just after it (the models in turns, {args.calibration_steps} "
        f"round{'s' if args.calibration_steps != 1 else ''}).\n\n" + table + "\n"
    )
    print(table)
    print(f"\nwrote {out / 'epoch_time.json'} and {out / 'epoch_time.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
