"""Distillation methods compared on one recipe: one table of gains over the
same seed's baseline.

    python -m benchmarks.methods --preset quick --seeds 0 1 2 --out runs/methods
        --teacher results/quick-teacher-seed0/models/teacher.keras
        [--methods hinton dkd at fitnets hinton+ls] [--data PATH] [-- MORE RUN FLAGS]

Per seed, the first method's run (`--out/<method>/seed<S>`, a complete
`python -m kd_keras run --preset P --seed S --teacher T --method M`) trains
the student baseline; every other method's run of that seed reuses it
(`--baseline`), so it trains the distilled student alone and its gain is
over the very same baseline. Seeds run one after another (every method of
seed 0, then of seed 1, ...), each run in its own process, never two at
once; a complete run is not run again and an interrupted one continues with
`--resume`, so the command can be repeated after an interruption.

A method is a `--method` choice, or one followed by `+ls` for
`--logit-standardization` (`hinton+ls`, `dkd+ls`).

Writes `methods.json` (the command, the CPU, every run's figures) and
`methods.md` (per method: the gain over the baseline, mean ± sample sd over
the seeds, and the paired difference to the first method's gain, mean ± sd;
then per seed) into `--out`, and prints the table.
"""

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.seeds import (
    RESERVED_FLAGS,
    check_seed_folder,
    clock,
    mean_sd,
    run_argv,
    run_child,
    seed_result,
    split_extra,
)
from kd_keras import atomic
from kd_keras.errors import ConfigError, run_command
from kd_keras.hardware import this_machine
from kd_keras.presets import DEFAULT_PRESET, PRESETS
from kd_keras.validation import METHODS

METHODS_JSON = "methods.json"
METHODS_MD = "methods.md"
LS_SUFFIX = "+ls"
# Set by benchmarks.methods itself, so refused after `--`.
OWN_FLAGS = (*RESERVED_FLAGS, "--teacher", "--method", "--logit-standardization", "--baseline")


def method_flags(method):
    """The `kd_keras run` flags of a method name (`dkd`, `hinton+ls`)."""
    name = method[: -len(LS_SUFFIX)] if method.endswith(LS_SUFFIX) else method
    if name not in METHODS or (method.endswith(LS_SUFFIX) and name not in ("hinton", "dkd")):
        choices = ", ".join([*METHODS, "hinton+ls", "dkd+ls"])
        raise ConfigError(f"--methods: unknown method {method!r}; choose from {choices}")
    return ["--method", name] + (["--logit-standardization"] if name != method else [])


def run_folder(out, method, seed):
    return Path(out) / method / f"seed{seed}"


def _spread(values, digits=2):
    mean, sd = mean_sd(values)
    if mean is None:
        return ""
    return f"{mean:+.{digits}f}" + (f" ± {sd:.{digits}f}" if len(values) > 1 else "")


def format_methods_table(summary):
    """The Markdown tables of a `methods.json` summary."""
    methods, seeds = summary["methods"], summary["seeds"]
    runs = summary["runs"]
    first = methods[0]
    lines = [
        f"`{summary['command']}`",
        "",
        f"CPU: {summary['machine']}; {summary['date']}.",
        "",
        f"Gain: test-accuracy points of the distilled student over the same seed's "
        f"baseline (trained once per seed, by the {first} run). Against {first}: the "
        f"distilled student's points over {first}'s of the same seed (paired).",
        "",
        f"| method | seeds | gain (points), mean ± sd | against {first}, mean ± sd |",
        "|---|---|---|---|",
    ]
    for method in methods:
        gains, paired = [], []
        for seed in seeds:
            result = runs.get(method, {}).get(str(seed))
            base = runs.get(first, {}).get(str(seed))
            if result is None:
                continue
            gains.append(result["gain_points"])
            if base is not None:
                paired.append(100 * (result["student_distilled"] - base["student_distilled"]))
        against = "" if method == first else _spread(paired)
        lines.append(f"| {method} | {len(gains)} | {_spread(gains)} | {against} |")
    lines += [
        "",
        "| method | seed | baseline | distilled | gain (points) | distilled train time | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        for method in methods:
            result = runs.get(method, {}).get(str(seed))
            if result is None:
                lines.append(f"| {method} | {seed} | not complete | | | | |")
                continue
            lines.append(
                f"| {method} | {seed} | {result['student_baseline']:.4f} "
                f"| {result['student_distilled']:.4f} | {result['gain_points']:+.2f} "
                f"| {clock(result.get('distilled_seconds'))} | {clock(result.get('wall_seconds'))} |"
            )
    return "\n".join(lines)


def run_result(folder):
    """A complete run's figures (`benchmarks.seeds.seed_result`, plus the
    distilled stage's training seconds), or None."""
    result = seed_result(folder)
    if result is not None:
        row = atomic.read_json_object(Path(folder) / "stages" / "student_distilled.json", {})
        result["distilled_seconds"] = (row or {}).get("train_seconds")
    return result


def _finish(out, summary):
    atomic.write_json(out / METHODS_JSON, summary)
    table = format_methods_table(summary)
    atomic.write_text(out / METHODS_MD, table + "\n")
    return table


def main(argv=None):
    argv, extra = split_extra(argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.methods",
        description="Distil with each method per seed, sharing each seed's baseline; "
        "tabulate the gains.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["hinton", "dkd", "at", "fitnets"],
        help="methods to compare; the first trains each seed's baseline (default: "
        "hinton dkd at fitnets)",
    )
    parser.add_argument("--teacher", required=True, help="the trained teacher all methods share")
    parser.add_argument("--out", required=True, help="folder of the runs")
    parser.add_argument("--data", help="as kd_keras run --data")
    args = parser.parse_args(argv)
    for name, values in (("--seeds", args.seeds), ("--methods", args.methods)):
        if len(set(values)) != len(values):
            parser.error(f"{name} has a value twice: {values}")
    for flag in extra:
        if flag.split("=")[0] in OWN_FLAGS:
            parser.error(f"{flag!r} after -- is set by benchmarks.methods")
    flags = {method: method_flags(method) for method in args.methods}
    if not Path(args.teacher).is_file():
        raise ConfigError(
            f"--teacher '{args.teacher}' is not a file; give a trained .keras teacher"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; give a folder")
    resume = {
        (method, seed): check_seed_folder(run_folder(out, method, seed), args.preset, seed)
        for seed in args.seeds
        for method in args.methods
    }
    out.mkdir(parents=True, exist_ok=True)
    previous = atomic.read_json_object(out / METHODS_JSON, {}) or {}
    command = ["python", "-m", "benchmarks.methods", "--preset", args.preset, "--seeds"]
    command += [str(seed) for seed in args.seeds] + ["--methods", *args.methods]
    command += ["--teacher", args.teacher, "--out", str(out)]
    command += (["--data", args.data] if args.data else []) + (["--", *extra] if extra else [])
    summary = {
        "command": shlex.join(command),
        "machine": this_machine().describe(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "methods": args.methods,
        "seeds": args.seeds,
        "runs": {method: {} for method in args.methods},
    }
    walls = previous.get("runs") or {}
    first = args.methods[0]
    shared = (["--data", args.data] if args.data else []) + ["--teacher", args.teacher, *extra]
    for seed in args.seeds:
        for method in args.methods:
            folder = run_folder(out, method, seed)
            result = run_result(folder)
            if result is None:
                own = [*shared, *flags[method]]
                if method != first:
                    baseline = run_folder(out, first, seed) / "models" / "student_baseline.keras"
                    own += ["--baseline", str(baseline)]
                command_ = run_argv(args.preset, seed, folder, own, resume=resume[method, seed])
                code, wall = run_child(
                    "benchmarks.methods", command_, lambda: _finish(out, summary)
                )
                result = run_result(folder)
                if code != 0 or result is None:
                    print(_finish(out, summary))
                    print(f"benchmarks.methods: {method} seed {seed} stopped (exit code {code})")
                    return code or 1
                result.update(wall_seconds=wall, resumed=resume[method, seed])
            else:
                old = (walls.get(method) or {}).get(str(seed)) or {}
                result.update(wall_seconds=old.get("wall_seconds"), resumed=old.get("resumed"))
            summary["runs"][method][str(seed)] = result
            _finish(out, summary)
    print(_finish(out, summary))
    return 0


if __name__ == "__main__":
    sys.exit(
        run_command(
            "benchmarks.methods", main, stop_hint="; run the same command again to continue"
        )
    )
