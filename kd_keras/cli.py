"""Command line: `python -m kd_keras run | evaluate | report | export | tune | app`."""

import argparse
import json
import sys
from pathlib import Path

# Only Keras-free modules at the top: --help and every check of the flags,
# the config and the paths run before TensorFlow starts (kd_keras/quiet.py).
from kd_keras import frontends
from kd_keras.config import RunConfig, data_kind
from kd_keras.errors import ConfigError, DataSourceError, run_command
from kd_keras.keras_files import check_keras_archive
from kd_keras.options import add_run_options, overrides_from_args
from kd_keras.presets import DEFAULT_PRESET, PRESETS, preset_help
from kd_keras.quiet import quiet_runtime_start, start_tensorflow
from kd_keras.run_folder import RunFolder
from kd_keras.validation import validate_image_size, validate_threads

VERBOSE_HELP = (
    "show TensorFlow's start-up lines (CUDA, oneDNN), held back by default "
    "unless TF_CPP_MIN_LOG_LEVEL is set"
)


def get_args(argv=None):
    """Parses the command line into an `argparse.Namespace`."""
    parser = argparse.ArgumentParser(
        prog="python -m kd_keras",
        description="Knowledge distillation for Keras image classifiers: train (or "
        "bring) a teacher, train a student baseline and a distilled student on "
        "CIFAR-10 or your own images, compare them, ship the student.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the three stages into a run folder",
        description="Train (or reuse) a teacher, a student baseline and a "
        "distilled student; write results, models and plots to --out.",
    )
    run.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help=preset_help() + " With --resume: the run's own settings.",
    )
    run.add_argument("--out", help="run folder (default: runs/<preset>; required with --resume)")
    run.add_argument(
        "--epochs",
        type=int,
        help="epochs of every stage (sets both --teacher-epochs and --student-epochs)",
    )
    add_run_options(run)  # Every RunConfig field with a flag (kd_keras/options.py).
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", action="store_true", help="continue the run in --out where it stopped"
    )
    mode.add_argument("--overwrite", action="store_true", help="replace the kd_keras run in --out")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the config, model sizes and an estimate of "
        "each stage's time (a few measured steps), train nothing",
    )
    run.add_argument(
        "--quiet", action="store_true", help="one line per epoch instead of Keras progress bars"
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="test (or validation) accuracy of a saved model",
        description="Accuracy and cross-entropy of a .keras model, a LiteRT "
        ".tflite file or a SavedModel folder on the test split, or with --run on "
        "a run's own test or validation split.",
    )
    evaluate.add_argument(
        "model",
        help="a .keras model file, a LiteRT .tflite file or a SavedModel folder "
        "(as `export` writes them)",
    )
    evaluate.add_argument(
        "--data",
        help="CIFAR-10 archive or folder, an image folder or a .npz file (as for "
        "run; with --run: the run's data, read from this path instead)",
    )
    evaluate.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="use the splits of this run folder (its data, seed, validation size, "
        "subsets and image size, from its config.json)",
    )
    evaluate.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="the split to evaluate on (val needs --run: it is carved from the "
        "training images by the run's seed)",
    )
    evaluate.add_argument(
        "--per-class", action="store_true", help="also report the accuracy of each class"
    )
    evaluate.add_argument("--test-per-class", type=int, help="evaluate on a subset")
    evaluate.add_argument(
        "--image-size",
        type=int,
        help="resize the test images to this square size (the "
        "model's input size; default: the data's own size)",
    )

    report = commands.add_parser("report", help="rebuild the table and plots of a run folder")
    report.add_argument("run_dir", help="a run folder")
    report.add_argument(
        "--reference",
        action="store_true",
        help="also print the run next to the reference table it reproduces "
        "(Hinton-style distillation, CIFAR-10, ResNet depth 30 -> 15), as Markdown",
    )

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
    export.add_argument(
        "--stage",
        nargs="+",
        default=["student_distilled"],
        help="stages to export (default student_distilled; also "
        "teacher, student_baseline or an added stage)",
    )
    export.add_argument(
        "--format",
        dest="formats",
        nargs="+",
        default=["litert"],
        help="saved_model and/or litert (default litert); the SavedModel is always float32",
    )
    export.add_argument(
        "--quantize",
        nargs="+",
        help="LiteRT quantisations: none (float32), float16, dynamic "
        "(int8 weights), int8 (full integer, calibrated); default "
        "int8 (none for a SavedModel alone)",
    )
    export.add_argument(
        "--io",
        nargs="+",
        default=["float32"],
        help="input/output type of int8 files: float32 (default: "
        "float pixels in, float logits out) and/or int8 (int8 "
        "pixels in, q = pixel - 128 for the usual scale 1 and zero "
        "point -128; int8 logits out)",
    )
    export.add_argument(
        "--calibration-images",
        type=int,
        default=256,
        help="training images of the run that calibrate int8 (a seeded sample; default 256)",
    )
    export.add_argument(
        "--seed", type=int, help="seed of the calibration sample (default: the run's seed)"
    )
    export.add_argument(
        "--data",
        help="the run's data, if it moved: a CIFAR-10 archive or folder, an image "
        "folder or a .npz file (default: the run's config.json)",
    )
    export.add_argument(
        "--limit",
        type=int,
        help="evaluate on the first N test images (default: the run's whole test set)",
    )
    export.add_argument(
        "--latency-repeats",
        type=int,
        default=200,
        help="timed one-image calls per model (median; default 200)",
    )
    export.add_argument(
        "--threads", type=int, help="LiteRT interpreter threads (default 1, LiteRT's default)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace exports that exist")
    for command in (run, evaluate, report, export):
        command.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    frontends.add_commands(commands)  # tune, app: main() hands their arguments on.
    return parser.parse_args(argv)


def _config_from_args(args):
    """The run's config: a preset plus the flags given.

    With `--resume`, the saved `config.json` of `--out` takes the preset's
    place, so `run --resume --out DIR` continues the run as it was started;
    flags given explicitly still apply (and are refused by the pipeline if
    they would change results).
    """
    overrides = overrides_from_args(args)
    if args.epochs is not None:
        # A stage's own flag wins, an explicit 0 included (`is None`, not `or`).
        overrides.setdefault("teacher_epochs", args.epochs)
        overrides.setdefault("student_epochs", args.epochs)
    overrides["verbose"] = 2 if args.quiet else 1
    saved = RunFolder(args.out or "")
    if args.resume and args.out and saved.config_file.is_file():
        base = saved.config().to_dict()  # A damaged file: one line, the fix.
        if args.preset is not None:
            base["preset"] = args.preset
        base.update({k: v for k, v in overrides.items() if v is not None})
        if base.get("strategy") != "mirrored" and args.devices is None:
            base["devices"] = None  # Resumed on other hardware: the saved devices go.
        config = RunConfig.from_dict(base)
        if {"warmup_epochs", "teacher_epochs", "student_epochs"} & set(overrides):
            config.check_schedule()  # A saved run is not checked again unless changed.
        return config
    return RunConfig.from_preset(args.preset or DEFAULT_PRESET, **overrides)


def check_data_path(source):
    """Raises `DatasetError` / `DataSourceError` for a `--data` path that
    does not exist or cannot be read as a file or folder; Keras-free, so it
    runs before TensorFlow starts (the data is read later)."""
    if data_kind(source) == "cifar10":
        from kd_keras.data.cifar10 import resolve_source

        resolve_source(source)  # Names the ways to provide CIFAR-10.
    elif not Path(str(source).strip()).expanduser().exists():
        raise DataSourceError(source, "no such file or folder; check the --data path")


def _run(args):
    config = _config_from_args(args)
    check_data_path(config.data)
    start_tensorflow(args.verbose)  # Every check above ran without TensorFlow.
    from kd_keras.report.results import format_table
    from kd_keras.train.measure import describe_models
    from kd_keras.train.pipeline import run_pipeline
    from kd_keras.train.run_setup import check_run_folder

    out = Path(args.out or f"runs/{config.preset}")
    budget_plan = None
    if config.budget is not None:
        from kd_keras.train.budget import size_run_to_budget

        given = [f for f in ("epochs", "teacher_epochs", "student_epochs") if getattr(args, f)]
        if args.budget is not None and given:
            flags = "/".join("--" + f.replace("_", "-") for f in given)
            raise ConfigError(f"--budget chooses the epochs; drop {flags} or drop --budget")

        if not (args.dry_run or args.resume):  # A folder that would refuse the run: now.
            check_run_folder(out, config, overwrite=args.overwrite)
        stream = sys.stderr if args.dry_run else sys.stdout  # A dry run's stdout is JSON.
        config, budget_plan = size_run_to_budget(
            config,
            out,
            resume=args.resume,
            flag_given=args.budget,
            log=lambda text: print(text, file=stream, flush=True),
        )
    if args.dry_run:
        from kd_keras.train.estimate import estimate_run_seconds, format_estimate
        from kd_keras.train.speed import apply_threading, resolve_run_precisions

        apply_threading(config)  # Before TensorFlow starts, as in a run.
        # Printed resolved, as a run would save it; the estimate says why.
        print(resolve_run_precisions(config)[0].to_json())
        summary = describe_models(config)  # Reads the data unless it is CIFAR-10.
        summary["estimate"] = estimate_run_seconds(config, data=summary["data"])
        print(json.dumps(summary, indent=2))
        # Human-readable on stderr; stdout stays two JSON documents.
        print(format_estimate(summary["estimate"]), file=sys.stderr)
        return 0
    rows = run_pipeline(
        config, out, resume=args.resume, overwrite=args.overwrite, budget_plan=budget_plan
    )
    print()
    print(format_table(rows))
    print(f"\nrun folder: {out}")
    return 0


MODEL_KINDS = "a .keras file, a LiteRT .tflite file or a SavedModel folder"


def model_kind(path):
    """What `evaluate` is given, from the path alone (nothing is loaded):
    `"keras"`, `"litert"` or `"saved_model"`; raises `ConfigError` naming
    the path and what is accepted."""
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ConfigError(f"model '{path}' is a folder without saved_model.pb; give {MODEL_KINDS}")
    if not path.exists():
        raise ConfigError(f"model '{path}' does not exist; give {MODEL_KINDS}")
    if not path.is_file():
        raise ConfigError(f"model '{path}' is not a regular file (a FIFO, socket or device)")
    kinds = {".keras": "keras", ".tflite": "litert"}
    if path.suffix.lower() not in kinds:
        raise ConfigError(
            f"model '{path}' has the suffix {path.suffix or '(none)'!r}; give {MODEL_KINDS}"
        )
    return kinds[path.suffix.lower()]


def _evaluate(args):
    if args.test_per_class is not None and args.test_per_class < 1:
        raise ConfigError(f"--test-per-class must be >= 1, got {args.test_per_class}")
    try:
        validate_image_size(args.image_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if args.split == "val" and args.run is None:
        raise ConfigError(
            "--split val needs --run RUN_DIR: the validation split is the one a run "
            "carved from the training images (its seed and validation size)"
        )
    config = None
    if args.run is not None:
        config = RunFolder(args.run).config()
        if config is None:
            raise ConfigError(f"'{args.run}' is not a kd_keras run folder (no config.json)")
    kind = model_kind(args.model)  # Before the data loads.
    if kind == "keras":
        check_keras_archive(args.model, role="model")  # Its zip directory, before the data.
    if args.data is not None or config is None:
        check_data_path(args.data)
    start_tensorflow(args.verbose)  # Every check above ran without TensorFlow.
    import numpy as np

    from kd_keras.data.splits import make_dataset, prepare_splits, splits_for

    overrides = {}
    if args.test_per_class is not None:
        overrides["test_per_class"] = args.test_per_class
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if config is not None:
        splits = splits_for(config, data=args.data, **overrides)
    else:
        # Only the test split is used: hold out no validation images.
        splits = prepare_splits(args.data, val_size=0, **overrides)
    images, labels = splits[args.split]
    result = {"model": args.model, "format": kind, f"{args.split}_images": len(labels)}
    if kind == "keras":
        from kd_keras.distill.teacher import load_teacher
        from kd_keras.train.measure import evaluate_model

        # The data's classes and image size, checked against the model's.
        model = load_teacher(
            args.model, len(splits["classes"]), image_shape=images.shape[1:], role="model"
        )
        dataset = make_dataset(images, labels, batch_size=256, training=False)
        result.update(evaluate_model(model, dataset))
        if args.per_class:
            predicted = np.argmax(model.predict(dataset, verbose=0), axis=-1)
    else:
        from kd_keras.export.evaluate import evaluate_litert, evaluate_saved_model

        evaluate = evaluate_litert if kind == "litert" else evaluate_saved_model
        with quiet_runtime_start():  # LiteRT's delegate line.
            measured = evaluate(args.model, (images, labels))
        predicted = measured["predictions"]
        result.update(
            accuracy=measured["accuracy"],
            loss=measured["loss"],
            latency_ms=measured["latency_ms"],
            runtime=measured["runtime"],
        )
    if args.per_class:
        from kd_keras.report.per_class import per_class_accuracy

        result["per_class"] = per_class_accuracy(labels, predicted, splits["classes"])
    print(json.dumps(result, indent=2))
    return 0


def _report(args):
    from kd_keras.report.reference import check_comparable, reference_table_of
    from kd_keras.report.results import format_table, load_stage_rows, write_results_or_reason

    run_dir = Path(args.run_dir)
    rows = load_stage_rows(run_dir)
    if not rows:
        raise ConfigError(f"'{run_dir}' holds no completed stage (no stages/*.json)")
    if args.reference:
        check_comparable(RunFolder(run_dir).config())  # Before anything is written.
    unwritten = write_results_or_reason(run_dir, rows)  # A read-only run is only read.
    print(format_table(rows))
    if unwritten:
        print(f"kd_keras: note: {unwritten}", file=sys.stderr)
    if args.reference:
        print()
        print(reference_table_of(run_dir))
    return 0


def _export(args):
    from kd_keras.export.plan import plan_exports, validate_options
    from kd_keras.export.spec import export_specs

    # Checked before any data loads or model converts, and before TensorFlow starts.
    try:
        validate_threads(args.threads)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    validate_options(
        calibration_images=args.calibration_images,
        max_images=args.limit,
        latency_repeats=args.latency_repeats,
        threads=args.threads,
        seed=args.seed,
    )
    plan_exports(
        args.run_dir,
        args.stage,
        export_specs(args.formats, args.quantize, args.io),
        overwrite=args.overwrite,
    )
    start_tensorflow(args.verbose)
    from kd_keras.export.exporter import export_run
    from kd_keras.report.results import format_export_table, load_stage_rows

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
    print()
    print(format_export_table(rows, load_stage_rows(args.run_dir)))
    print("\nfiles:")
    for row in rows:
        print(f"  {Path(args.run_dir) / row['file']}")
    return 0


def main(argv=None):
    """Runs the CLI; returns the exit code (see `kd_keras.errors`: 0 ok,
    1 the run failed, 2 bad input, 130 stopped)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in frontends.COMMANDS:
        return frontends.COMMANDS[argv[0]](argv[1:])
    args = get_args(argv)
    handlers = {"run": _run, "evaluate": _evaluate, "report": _report, "export": _export}
    return run_command("kd_keras", lambda: handlers[args.command](args))
