"""Command line: `python -m tuning --teacher T.keras --data ARCHIVE --out DIR`."""

import argparse
import dataclasses
import sys
from pathlib import Path

from kd_keras.config import RunConfig
from kd_keras.errors import run_command
from kd_keras.options import add_run_options, overrides_from_args
from kd_keras.presets import DEFAULT_PRESET, PRESETS
from kd_keras.run_folder import RunFolder
from kd_keras.search_folder import MAX_TRIAL_SEEDS, MAX_TRIALS, TRIAL_COMPLETED, SearchFolder
from kd_keras.text import plural
from kd_keras.validation import MAX_EPOCHS, METHOD_FIELDS, METHODS

# Recipe options the search takes (run options, kd_keras/options.py); the
# rest of the recipe comes from --preset or the --apply-to run.
_CONFIG_FIELDS = (
    "seed",
    "student_depth",
    "student_width",
    "student_model",
    "image_size",
    "val_size",
    "train_per_class",
    "val_per_class",
    "batch_size",
    "learning_rate",
    "threads",
    *METHOD_FIELDS,
) + tuple(
    # The teacher's output kind, where the run has that option.
    f.name
    for f in dataclasses.fields(RunConfig)
    if f.name == "teacher_outputs"
)
# Where the search's meaning differs from `python -m kd_keras run`'s.
_CONFIG_HELP = {
    "seed": "seed of the data split, student init, data order and tuner",
    "student_model": "student architecture: resnet<depth> (default), a keras.applications "
    "name such as mobilenetv3small:alpha=0.35 or efficientnetb0, or a .keras file "
    "(see python -m kd_keras run --help)",
}


def default_prog():
    """How the search was invoked, for its usage line: `python -m tuning`
    from a checkout (`python -m kd_keras.tuning` installed), else the
    script's name (`kd-keras-tune`)."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return f"python -m {__package__}" if script in ("", "__main__.py", "-c") else script


def get_args(argv=None, prog=None):
    """Parses the command line into an `argparse.Namespace` (`prog`: the
    command's name in its usage line; default `default_prog()`)."""
    parser = argparse.ArgumentParser(
        prog=prog or default_prog(),
        description="Search the distillation temperature T and weight alpha with "
        "Keras Tuner: each trial distils a fresh student (same initial weights, "
        "same data order) from a trained teacher and is scored by the student's "
        "validation accuracy. Running the same command again resumes the search.",
    )
    parser.add_argument(
        "--teacher",
        help="the trained teacher .keras file (default with "
        "--apply-to: RUN_DIR/models/teacher.keras)",
    )
    parser.add_argument(
        "--data",
        help="cifar-10-python.tar.gz or cifar-10-batches-py/, "
        "an image folder of class subfolders or a .npz file (as for "
        "python -m kd_keras run; default: the --apply-to run's data, "
        "then $KD_KERAS_CIFAR10)",
    )
    parser.add_argument(
        "--out", required=True, help="the search folder (resumed if it holds a search)"
    )
    parser.add_argument(
        "--tuner",
        default="random",
        choices=("random", "bayesian", "hyperband"),
        help="random search, Bayesian optimisation (needs scikit-learn) "
        "or Hyperband (default: random)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=10,
        help=f"number of trials, at most {MAX_TRIALS}; for hyperband a cap on them (default: 10)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"epochs per trial, at most {MAX_EPOCHS}; for hyperband the "
        "most one model trains (default: the recipe's student epochs)",
    )
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        choices=sorted(PRESETS),
        help="kd_keras preset giving the data subset and training recipe "
        f"(default: {DEFAULT_PRESET}; with --apply-to the run's own config is used)",
    )
    add_run_options(parser, _CONFIG_FIELDS, help_texts=_CONFIG_HELP)
    parser.add_argument(
        "--temperature-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        default=None,
        help="range of T, sampled on a log scale (default: 1 20)",
    )
    parser.add_argument(
        "--alpha-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        default=None,
        help="range of alpha, the hard-label weight, in [0, 1] (default: 0 1)",
    )
    parser.add_argument(
        "--alpha-step",
        type=float,
        help="only try alpha on this grid (e.g. 0.1); default: continuous",
    )
    parser.add_argument(
        "--temperature", type=float, help="hold T at this value and tune only alpha"
    )
    parser.add_argument("--alpha", type=float, help="hold alpha at this value and tune only T")
    parser.add_argument(
        "--methods",
        type=_method_list,
        help="also search the distillation method: comma-separated names from "
        f"{', '.join(METHODS)} (e.g. hinton,dkd); each method's other settings are "
        "its flags' (default: --method's, not searched)",
    )
    parser.add_argument(
        "--dkd-beta-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        help="search DKD's beta on a log scale in trials of method dkd (with "
        "--method dkd or dkd in --methods; default: --dkd-beta's value)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the search in --out and start over"
    )
    parser.add_argument(
        "--apply-to",
        metavar="RUN_DIR",
        help="after the search, train the run folder's distilled stage "
        "again with the best T and alpha and add it to its results as "
        "'student_distilled_tuned'; the search then uses the run's "
        "config (recipe, data subset, student) unless flags override it",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="one line per trial instead of Keras progress bars"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="run the trials in N worker processes on this machine (Keras Tuner's "
        "distributed mode: this process is the chief and serves them; the cores are "
        "split between them unless --threads is given); on several machines, set "
        "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT instead "
        "(docs/tuning.md)",
    )
    parser.add_argument(
        "--trial-seeds",
        type=int,
        default=1,
        help="score each trial as the mean validation accuracy of K students of "
        "different initial weights (K times the training; default: 1)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the search in --out, which must exist (running the same "
        "command again does the same)",
    )
    parser.add_argument(
        "--no-teacher-cache",
        dest="cache_teacher_logits",
        action="store_false",
        help="run the teacher in every trial instead of replaying the "
        "first trial's teacher logits (same results, slower)",
    )
    return parser.parse_args(argv)


def _method_list(text):
    """argparse `type` of `--methods`: comma-separated method names."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise argparse.ArgumentTypeError(f"--methods needs one or more method names, got {text!r}")
    return methods


def _space_from_args(args):
    from kd_keras.errors import SearchError

    from .hypermodel import DEFAULT_ALPHA_RANGE, DEFAULT_TEMPERATURE_RANGE, SearchSpace

    t_min, t_max = args.temperature_range or DEFAULT_TEMPERATURE_RANGE
    a_min, a_max = args.alpha_range or DEFAULT_ALPHA_RANGE
    try:
        return SearchSpace(
            temperature_min=t_min,
            temperature_max=t_max,
            alpha_min=a_min,
            alpha_max=a_max,
            alpha_step=args.alpha_step,
            fixed_temperature=args.temperature,
            fixed_alpha=args.alpha,
            methods=args.methods,
            dkd_beta_range=args.dkd_beta_range,
        )
    except ValueError as error:
        raise SearchError(str(error)) from None


def _config_from_args(args):
    """The search's `RunConfig`: the --apply-to run's (its data, classes,
    image size and split sizes) or the preset's, with the flags given.

    `data` is part of it, so that the split sizes are checked against the
    data the search reads (CIFAR-10's limits only for CIFAR-10; an image
    folder's or `.npz` file's when its splits are made)."""
    overrides = overrides_from_args(args, _CONFIG_FIELDS)
    if args.data:
        overrides["data"] = args.data
    if args.apply_to:
        from .apply import check_run_folder

        check_run_folder(args.apply_to)
        # Tune in the setting the tuned T and alpha will be used in.
        fields = RunFolder(args.apply_to).config().to_dict()
        fields.update(overrides)
        return RunConfig.from_dict(fields)
    return RunConfig.from_preset(args.preset, **overrides)


def _print_trial(row):
    by = f" [{row['worker']}]" if row.get("worker") else ""
    head = f"trial {row['trial_id']}{by}: T={row['temperature']:.3g} alpha={row['alpha']:.3g}"
    if row["val_accuracy"] is None:
        error = f": {row['error']}" if row.get("error") else ""
        print(f"{head} {row['status']}{error}", flush=True)
        return
    seconds = f", {row['seconds']:.1f} s" if row.get("seconds") is not None else ""
    print(
        f"{head} val_accuracy={row['val_accuracy']:.4f} "
        f"({plural(row['epochs'], 'epoch')}{seconds})",
        flush=True,
    )


def _noise_line(best):
    """Whether the best trial beats the default (or, without a default
    trial, the next best) by more than the noise, in one line."""
    line = f"noise: standard error {best['score_se']:.4f} on {best['val_images']} validation images"
    if best.get("seed_sd") is not None:
        line += f" and {len(best['seed_scores'])} seeds (their sd {best['seed_sd']:.4f})"
    if "ci95" in best:
        low, high = best["ci95"]
        line += f", 95 % interval {low:.4f}-{high:.4f}"
    if best.get("default_trial_id") == best["trial_id"]:
        return f"{line}; the best trial is the default T and alpha"
    if "default_score" in best:
        name, key, margin_key = "the default", "default", "default_margin_se"
    elif "runner_up_score" in best:
        name, key, margin_key = "the next best trial", "runner_up", "margin_se"
    else:
        return line
    score = best[f"{key}_score"]
    verdict = "beats" if best[f"beats_{key}"] else "does not beat"
    return (
        f"{line}; the best {verdict} {name} (trial {best[f'{key}_trial_id']}: {score:.4f}) by "
        f"more than the noise (margin {best['score'] - score:.4f}, 2 standard errors "
        f"{2 * best[margin_key]:.4f})"
    )


def _worker_argv(argv):
    """The chief's arguments for its local workers: without `--workers`,
    `--overwrite`, `--resume` and `--threads` (each worker gets its share)."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in ("--workers", "--threads"):
            skip = 0 if "=" in arg else 1
            continue
        if name in ("--overwrite", "--resume"):
            continue
        out.append(arg)
    return out


def _run(args, argv):
    from kd_keras.errors import SearchError, SearchFailedError

    from .apply import run_best
    from .distributed import (
        LocalWorkers,
        become_local_chief,
        check_workers,
        role,
        threads_per_worker,
        worker_id,
    )
    from .search import run_search

    for flag, value, high in (
        ("--trials", args.trials, MAX_TRIALS),
        ("--epochs", args.epochs, MAX_EPOCHS),
        ("--trial-seeds", args.trial_seeds, MAX_TRIAL_SEEDS),
    ):
        if value is not None and value < 1:
            raise SearchError(f"{flag} must be >= 1, got {value}")
        if value is not None and value > high:
            raise SearchError(f"{flag} must be at most {high}, got {value}; ask for fewer")
    workers = check_workers(args.workers)
    if args.resume and not SearchFolder(args.out).settings_file.is_file():
        raise SearchError(
            f"--resume: '{args.out}' holds no search to continue; drop --resume to start one"
        )
    if args.resume and args.overwrite:
        raise SearchError("--resume and --overwrite contradict each other; choose one")
    space = _space_from_args(args)
    config = _config_from_args(args)
    local_workers = None
    if workers:
        if role() is not None:
            raise SearchError(
                "--workers starts its own chief and workers on this machine; unset "
                "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT, or drop "
                "--workers"
            )
        become_local_chief()
        local_workers = LocalWorkers(
            _worker_argv(argv), workers, threads_per_worker(workers, args.threads)
        )
    teacher = args.teacher
    if teacher is None:
        if not args.apply_to:
            raise SearchError(
                "--teacher is required (or --apply-to a run folder with models/teacher.keras)"
            )
        teacher = RunFolder(args.apply_to).model_file("teacher")
    result = run_search(
        teacher,
        config.data,
        args.out,
        config=config,
        space=space,
        tuner=args.tuner,
        max_trials=args.trials,
        epochs=args.epochs,
        overwrite=args.overwrite,
        verbose=0 if args.quiet else 1,
        report=_print_trial,
        cache_teacher_logits=args.cache_teacher_logits,
        local_workers=local_workers,
        trial_seeds=args.trial_seeds,
    )
    if role() == "worker":
        print(f"worker {worker_id()}: no trial left; search folder: {result.folder}")
        return 0
    done = sum(r["status"] == TRIAL_COMPLETED for r in result.rows)
    print(f"\n{done} of {len(result.rows)} trials completed; search folder: {result.folder}")
    if result.best is None:
        failed = [r for r in result.rows if r.get("error")]
        last = failed[-1] if failed else None
        reason = f" (trial {last['trial_id']}: {last['error'].rstrip('.')})" if last else ""
        raise SearchFailedError(
            f"no trial completed{reason}; fix the cause and run again with --overwrite"
        )
    best = result.best
    print(
        f"best: T={best['temperature']:.4g} alpha={best['alpha']:.4g} "
        f"val_accuracy={best['score']:.4f} (trial {best['trial_id']})"
    )
    if "score_se" in best:
        print(_noise_line(best))
    if args.apply_to:
        row = run_best(
            result.folder, args.apply_to, data=args.data, verbose=2 if args.quiet else None
        )
        print(
            f"{row['stage']} in {args.apply_to}: test_accuracy={row['test_accuracy']:.4f} "
            f"val_accuracy={row['val_accuracy']:.4f} (T={row['temperature']:.4g}, "
            f"alpha={row['alpha']:.4g})"
        )
    return 0


def main(argv=None, prog=None):
    """Runs the CLI; returns the exit code (0 ok, 1 the search failed, 2 bad input).
    `prog` names the command in its usage line (e.g. "kd-keras tune").

    Example:

    >>> main(["--teacher", "runs/quick/models/teacher.keras",
    ...       "--data", "cifar-10-python.tar.gz", "--out", "searches/quick",
    ...       "--tuner", "bayesian", "--trials", "12", "--epochs", "5"])
    0
    """
    args = get_args(argv, prog)
    # keras-tuner gives up after consecutive failed trials with a
    # RuntimeError holding the last trial's traceback: the search failed.
    return run_command(
        "tuning",
        lambda: _run(args, sys.argv[1:] if argv is None else argv),
        failures=(RuntimeError,),
        failure_prefix="the search failed: ",
        stop_hint=" (run the same command to resume)",
    )
