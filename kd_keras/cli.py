"""Command line: `python -m kd_keras run | evaluate | report`."""

import argparse
import json
import sys
from pathlib import Path

from kd_keras.config import PRESETS, ConfigError, RunConfig

# Run options: (flag, RunConfig field, type, help). Public: the app builds
# command lines from it.
RUN_OPTIONS = (
    ("--seed", "seed", int, "random seed of data split, init and order"),
    ("--teacher-depth", "teacher_depth", int, "teacher ResNet depth (6n+2 or any int >= 8)"),
    ("--student-depth", "student_depth", int, "student ResNet depth"),
    ("--teacher-width", "teacher_width", int, "teacher first-stage filters (16 = paper)"),
    ("--student-width", "student_width", int, "student first-stage filters"),
    ("--teacher-epochs", "teacher_epochs", int, "teacher epochs"),
    ("--student-epochs", "student_epochs", int, "epochs of each student stage"),
    ("--temperature", "temperature", float, "distillation temperature T > 0 (default 4)"),
    ("--alpha", "alpha", float, "weight of the hard-label loss, in [0, 1] (default 0.3)"),
    ("--batch-size", "batch_size", int, "batch size"),
    ("--learning-rate", "learning_rate", float, "peak SGD learning rate"),
    ("--momentum", "momentum", float, "SGD momentum (Nesterov)"),
    ("--weight-decay", "weight_decay", float, "decoupled weight decay"),
    ("--warmup-epochs", "warmup_epochs", int, "linear warm-up epochs before cosine decay"),
    ("--val-size", "val_size", int, "training images held out for validation"),
    ("--train-per-class", "train_per_class", int, "training images per class (subset)"),
    ("--val-per-class", "val_per_class", int, "validation images per class (subset)"),
    ("--test-per-class", "test_per_class", int, "test images per class (subset)"),
    ("--precision", "precision", str,
     "training precision of the models: auto (default: bfloat16 where the "
     "CPU/GPU has it natively, float16 on older GPUs, else float32), float32, "
     "mixed_bfloat16 or mixed_float16"),
    ("--teacher-precision", "teacher_precision", str,
     "teacher inference precision while distilling: auto (default), float32, "
     "bfloat16 or float16"),
    ("--steps-per-execution", "steps_per_execution", int,
     "training steps per graph call (default 1; lowered to a divisor of the "
     "steps per epoch)"),
    ("--threads", "threads", int,
     "TensorFlow intra-op threads, inter-op 1 (default: TensorFlow's choice)"),
)


def get_args(argv=None):
    """Parses the command line into an `argparse.Namespace`."""
    parser = argparse.ArgumentParser(
        prog="python -m kd_keras",
        description="Knowledge distillation on CIFAR-10: train a teacher, a "
        "student baseline and a distilled student, and compare them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the three stages into a run folder",
        description="Train (or reuse) a teacher, a student baseline and a "
        "distilled student; write results, models and plots to --out.",
    )
    run.add_argument("--preset", choices=sorted(PRESETS),
                     help="named settings: smoke (seconds, for tests), quick "
                     "(the default; ~20 min on a 2-core CPU), paper (reference "
                     "depths, for a GPU). With --resume: the run's own settings")
    run.add_argument("--data", help="cifar-10-python.tar.gz or cifar-10-batches-py/ "
                     "(default: $KD_KERAS_CIFAR10, the Keras cache, then download)")
    run.add_argument("--out", help="run folder (default: runs/<preset>; required "
                     "with --resume)")
    run.add_argument("--teacher", help="reuse this trained teacher .keras file")
    run.add_argument("--epochs", type=int, help="epochs of every stage (sets both "
                     "--teacher-epochs and --student-epochs)")
    for flag, field, kind, text in RUN_OPTIONS:
        run.add_argument(flag, dest=field, type=kind, help=text)
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out where it stopped")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the kd_keras run in --out")
    run.add_argument("--dry-run", action="store_true",
                     help="print the config, model sizes and an estimate of "
                     "each stage's time (a few measured steps), train nothing")
    run.add_argument("--quiet", action="store_true",
                     help="one line per epoch instead of Keras progress bars")

    evaluate = commands.add_parser("evaluate", help="test accuracy of a saved model")
    evaluate.add_argument("model", help="a .keras model file")
    evaluate.add_argument("--data", help="CIFAR-10 archive or folder (as for run)")
    evaluate.add_argument("--test-per-class", type=int, help="evaluate on a subset")

    report = commands.add_parser("report", help="rebuild the table and plots of a run folder")
    report.add_argument("run_dir", help="a run folder")
    return parser.parse_args(argv)


def _config_from_args(args):
    """The run's config: a preset plus the flags given.

    With `--resume`, the saved `config.json` of `--out` takes the preset's
    place, so `run --resume --out DIR` continues the run as it was started;
    flags given explicitly still apply (and are refused by the pipeline if
    they would change results).
    """
    overrides = {field: getattr(args, field) for _, field, _, _ in RUN_OPTIONS}
    if args.epochs is not None:
        overrides["teacher_epochs"] = overrides["teacher_epochs"] or args.epochs
        overrides["student_epochs"] = overrides["student_epochs"] or args.epochs
    overrides.update(data=args.data, teacher=args.teacher,
                     verbose=2 if args.quiet else 1)
    saved = Path(args.out or "", "config.json")
    if args.resume and args.out and saved.is_file():
        base = RunConfig.load(saved).to_dict()
        if args.preset is not None:
            base["preset"] = args.preset
        base.update({k: v for k, v in overrides.items() if v is not None})
        return RunConfig.from_dict(base)
    return RunConfig.from_preset(args.preset or "quick", **overrides)


def _run(args):
    from kd_keras.pipeline import describe_models, run_pipeline
    from kd_keras.results import format_table

    config = _config_from_args(args)
    out = Path(args.out or f"runs/{config.preset}")
    if args.dry_run:
        from kd_keras.speed import (
            apply_threading,
            estimate_run_seconds,
            format_estimate,
            resolve_run_precisions,
        )

        apply_threading(config)  # Before TensorFlow starts, as in a run.
        # Printed resolved, as a run would save it; the estimate says why.
        print(resolve_run_precisions(config)[0].to_json())
        summary = describe_models(config)
        summary["estimate"] = estimate_run_seconds(config)
        print(json.dumps(summary, indent=2))
        # Human-readable on stderr; stdout stays two JSON documents.
        print(format_estimate(summary["estimate"]), file=sys.stderr)
        return 0
    rows = run_pipeline(config, out, resume=args.resume, overwrite=args.overwrite)
    print()
    print(format_table(rows))
    print(f"\nrun folder: {out}")
    return 0


def _evaluate(args):
    from kd_keras.data import make_dataset, prepare_splits
    from kd_keras.pipeline import evaluate_model, load_teacher

    model = load_teacher(args.model)
    splits = prepare_splits(args.data, test_per_class=args.test_per_class)
    images, labels = splits["test"]
    result = evaluate_model(model, make_dataset(images, labels, batch_size=256, training=False))
    print(json.dumps({"model": args.model, "test_images": len(labels), **result}, indent=2))
    return 0


def _report(args):
    from kd_keras.results import format_table, load_stage_rows, write_results

    run_dir = Path(args.run_dir)
    rows = load_stage_rows(run_dir)
    if not rows:
        raise ConfigError(f"'{run_dir}' holds no completed stage (no stages/*.json)")
    write_results(run_dir, rows)
    print(format_table(rows))
    return 0


def main(argv=None):
    """Runs the CLI; returns the exit code (0 ok, 1 run failed, 2 bad input)."""
    args = get_args(argv)
    from kd_keras.atomic import DiskWriteError, RunLockedError
    from kd_keras.callbacks import NonFiniteLossError
    from kd_keras.data import DatasetError
    from kd_keras.pipeline import RunFolderError, RunStopped, TeacherError

    handlers = {"run": _run, "evaluate": _evaluate, "report": _report}
    try:
        return handlers[args.command](args)
    except (ConfigError, DatasetError, RunFolderError, TeacherError, RunLockedError) as error:
        print(f"kd_keras: error: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, DiskWriteError) as error:
        print(f"kd_keras: error: {error}", file=sys.stderr)
        return 1
    except (RunStopped, KeyboardInterrupt) as error:
        print(f"kd_keras: stopped: {error or 'interrupted'}", file=sys.stderr)
        return 130
