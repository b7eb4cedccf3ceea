"""Command line: `python -m kd_keras run | evaluate | report | export`."""

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
    ("--teacher-model", "teacher_model", str,
     "teacher architecture: resnet<depth> (default, with --teacher-depth), a "
     "keras.applications name (mobilenetv3small, mobilenetv3large, efficientnetb0-b7, "
     "efficientnetv2b0-b3, efficientnetv2s; options after a colon, e.g. "
     "mobilenetv3small:alpha=0.35,minimalistic=true or efficientnetb0:weights=FILE.weights.h5) "
     "or a .keras file to train from"),
    ("--student-model", "student_model", str, "student architecture (as --teacher-model)"),
    ("--image-size", "image_size", int,
     "resize every image to this square size (default: the data's own size)"),
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
    ("--strategy", "strategy", str,
     "tf.distribute strategy: default (one device), mirrored (several devices "
     "of this machine) or multi_worker (one process per machine, each with "
     "its TF_CONFIG); --batch-size stays the global batch"),
)


def _device_list(text):
    """`--devices`: a comma-separated list of device names."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise argparse.ArgumentTypeError(
            f"--devices needs device names such as /gpu:0,/gpu:1, got {text!r}"
        )
    return devices


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
                     "(the default; 6-10 min on a 2-core CPU with native bfloat16), "
                     "full (all images, teacher depth 30, student depth 15; about an "
                     "hour a stage there), paper (full with 160 epochs, for a GPU). "
                     "With --resume: the run's own settings")
    run.add_argument("--data", help="cifar-10-python.tar.gz or cifar-10-batches-py/ "
                     "(default: $KD_KERAS_CIFAR10, the Keras cache, then download), "
                     "an image folder with one subfolder per class (or train/ and "
                     "test/ with class subfolders), or a .npz file with x_train, "
                     "y_train[, x_test, y_test, class_names]")
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
    run.add_argument("--devices", type=_device_list,
                     help="with --strategy mirrored: comma-separated devices, e.g. "
                     "/gpu:0,/gpu:1 (default: every GPU)")
    run.add_argument("--sync-batch-norm", action="store_true", default=None,
                     help="batch-norm statistics over the global batch, not each "
                     "replica's part (changes results; kept on --resume)")

    evaluate = commands.add_parser("evaluate", help="test accuracy of a saved model")
    evaluate.add_argument("model", help="a .keras model file")
    evaluate.add_argument("--data", help="CIFAR-10 archive or folder (as for run)")
    evaluate.add_argument("--test-per-class", type=int, help="evaluate on a subset")

    report = commands.add_parser("report", help="rebuild the table and plots of a run folder")
    report.add_argument("run_dir", help="a run folder")

    export = commands.add_parser(
        "export",
        help="ship a run's models as SavedModel / LiteRT files, measured",
        description="Export stages of a run folder into RUN_DIR/export/ as a "
        "TensorFlow SavedModel and/or LiteRT (.tflite) files, quantised as "
        "asked; evaluate each on the run's test set (LiteRT files through the "
        "LiteRT interpreter) against the Keras model, and add the rows "
        "(<stage>@<variant>) to the run's results. Lists take several names "
        "(space- or comma-separated).",
    )
    export.add_argument("run_dir", help="a finished run folder (put it first)")
    export.add_argument("--stage", nargs="+", default=["student_distilled"],
                        help="stages to export (default student_distilled; also "
                        "teacher, student_baseline or an added stage)")
    export.add_argument("--format", dest="formats", nargs="+", default=["litert"],
                        help="saved_model and/or litert (default litert); the "
                        "SavedModel is always float32")
    export.add_argument("--quantize", nargs="+",
                        help="LiteRT quantisations: none (float32), float16, dynamic "
                        "(int8 weights), int8 (full integer, calibrated); default "
                        "int8 (none for a SavedModel alone)")
    export.add_argument("--io", nargs="+", default=["float32"],
                        help="input/output type of int8 files: float32 (default: "
                        "float pixels in, float logits out) and/or int8 (int8 "
                        "pixels in, q = pixel - 128 for the usual scale 1 and zero "
                        "point -128; int8 logits out)")
    export.add_argument("--calibration-images", type=int, default=256,
                        help="training images of the run that calibrate int8 "
                        "(a seeded sample; default 256)")
    export.add_argument("--seed", type=int,
                        help="seed of the calibration sample (default: the run's seed)")
    export.add_argument("--data", help="CIFAR-10 archive or folder (default: the "
                        "run's config.json)")
    export.add_argument("--limit", type=int,
                        help="evaluate on the first N test images (default: the "
                        "run's whole test set)")
    export.add_argument("--latency-repeats", type=int, default=200,
                        help="timed one-image calls per model (median; default 200)")
    export.add_argument("--threads", type=int,
                        help="LiteRT interpreter threads (default 1, LiteRT's default)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace exports that exist")
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
                     verbose=2 if args.quiet else 1, devices=args.devices,
                     sync_batch_norm=args.sync_batch_norm)
    saved = Path(args.out or "", "config.json")
    if args.resume and args.out and saved.is_file():
        from kd_keras.pipeline import load_run_config

        base = load_run_config(saved).to_dict()  # A damaged file: one line, the fix.
        if args.preset is not None:
            base["preset"] = args.preset
        base.update({k: v for k, v in overrides.items() if v is not None})
        if base.get("strategy") != "mirrored" and args.devices is None:
            base["devices"] = None  # Resumed on other hardware: the saved devices go.
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

    if args.test_per_class is not None and args.test_per_class < 1:
        raise ConfigError(f"--test-per-class must be >= 1, got {args.test_per_class}")
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


def _export(args):
    from kd_keras.export_spec import (
        ExportError,
        export_specs,
        plan_exports,
        validate_options,
    )

    try:
        # Checked before any data loads or model converts.
        validate_options(calibration_images=args.calibration_images,
                         max_images=args.limit, latency_repeats=args.latency_repeats,
                         threads=args.threads, seed=args.seed)
        plan_exports(args.run_dir, args.stage,
                     export_specs(args.formats, args.quantize, args.io),
                     overwrite=args.overwrite)
        from kd_keras.export import export_run
        from kd_keras.results import format_export_table, load_stage_rows

        rows = export_run(
            args.run_dir,
            stages=args.stage,
            formats=args.formats,
            quantizations=args.quantize,
            io=args.io,
            calibration_images=args.calibration_images,
            seed=args.seed,
            data=args.data,
            max_images=args.limit,
            latency_repeats=args.latency_repeats,
            threads=args.threads,
            overwrite=args.overwrite,
            log=lambda line: print(f"kd_keras: {line}", flush=True),
        )
    except ExportError as error:
        print(f"kd_keras: error: {error}", file=sys.stderr)
        return 2
    print()
    print(format_export_table(rows, load_stage_rows(args.run_dir)))
    print("\nfiles:")
    for row in rows:
        print(f"  {Path(args.run_dir) / row['file']}")
    return 0


def main(argv=None):
    """Runs the CLI; returns the exit code (0 ok, 1 run failed, 2 bad input)."""
    args = get_args(argv)
    from kd_keras.atomic import DamagedFileError, DiskWriteError, RunLockedError
    from kd_keras.callbacks import NonFiniteLossError
    from kd_keras.data import DatasetError
    from kd_keras.pipeline import RunFolderError, RunStopped, TeacherError

    handlers = {"run": _run, "evaluate": _evaluate, "report": _report, "export": _export}
    try:
        return handlers[args.command](args)
    except (ConfigError, DatasetError, RunFolderError, TeacherError, RunLockedError,
            DamagedFileError) as error:
        print(f"kd_keras: error: {error}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, DiskWriteError) as error:
        print(f"kd_keras: error: {error}", file=sys.stderr)
        return 1
    except MemoryError:
        print("kd_keras: error: out of memory; use smaller models or batches "
              "(--batch-size, --teacher-width) or free memory", file=sys.stderr)
        return 1
    except Exception as error:
        if type(error).__name__ != "ResourceExhaustedError":  # TensorFlow's OOM.
            raise
        print("kd_keras: error: out of memory in TensorFlow; use smaller models or "
              "batches (--batch-size, --teacher-width) or free memory", file=sys.stderr)
        return 1
    except (RunStopped, KeyboardInterrupt) as error:
        print(f"kd_keras: stopped: {error or 'interrupted'}", file=sys.stderr)
        return 130
