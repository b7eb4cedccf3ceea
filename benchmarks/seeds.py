"""The distillation gain over several seeds: one full run per seed, one table.

    python -m benchmarks.seeds --preset quick --seeds 0 1 2 --out runs/seeds
        [--data PATH] [-- MORE RUN FLAGS]

Each seed is a complete `python -m kd_keras run --preset P --seed S` into
`--out/seed<S>`, in its own process (so a precision or thread setting
cannot leak from one seed into the next), one after another: never two
trainings on the same cores. A seed whose run folder is complete is not
run again, and an interrupted one is continued with `--resume`, so the
command can be repeated after an interruption or a failure. `--data` and
the flags after `--` go to every `kd_keras run` (e.g. `-- --precision
float32`); on a resume `kd_keras` refuses, in one line, any that differ
from the run's saved settings. A seed folder holding another preset's or
seed's run, or files that are no run, is refused before anything trains.

Writes `seeds.json` (the command, the CPU, and per seed the three test
accuracies, the gain in points, the summed training seconds, the wall time
and the resolved precisions; seeds of earlier commands in the same folder
that were not asked again are kept under `other_seeds`) and `seeds.md`
(the table: per seed, then mean ± sample standard deviation) into `--out`,
and prints the table. The wall time of a seed is that of its last
`kd_keras run` process (a resumed seed's earlier process is not counted;
the table marks it "resumed").
"""

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from kd_keras import atomic
from kd_keras.errors import ConfigError, run_command
from kd_keras.hardware import this_machine
from kd_keras.presets import DEFAULT_PRESET, PRESETS
from kd_keras.report.gains import distillation_gain
from kd_keras.run_folder import RunFolder
from kd_keras.stages import STAGES

SEEDS_JSON = "seeds.json"
SEEDS_MD = "seeds.md"


def seed_folder(out, seed):
    return Path(out) / f"seed{seed}"


# Set by benchmarks.seeds itself, so refused after `--`.
RESERVED_FLAGS = (
    "--preset",
    "--seed",
    "--out",
    "--data",
    "--resume",
    "--overwrite",
    "--dry-run",
    "-h",
    "--help",
)


def run_argv(preset, seed, folder, extra, *, resume):
    """The `kd_keras run` command of one seed (`extra` holds `--data` and the
    flags after `--`); with `resume`, `kd_keras` checks them against the
    folder's saved settings and refuses a difference in one line."""
    argv = [sys.executable, "-m", "kd_keras", "run", "--preset", preset, "--seed", str(seed)]
    argv += ["--out", str(folder), "--quiet", *extra]
    return argv + (["--resume"] if resume else [])


def check_seed_folder(folder, preset, seed):
    """Refuses a seed folder that holds something other than this seed's run.

    Returns:
        True if the folder holds a run to continue (or a complete one),
        False if there is nothing yet.

    Raises:
        ConfigError: the folder holds files but no kd_keras run, or a run of
            another preset or seed.
    """
    folder = Path(folder)
    if not folder.exists() or not any(folder.iterdir()):
        return False
    saved = RunFolder(folder).config_dict(None)
    if saved is None:
        raise ConfigError(
            f"'{folder}' holds files but no config.json (not a kd_keras run); "
            "move them or choose another --out"
        )
    if saved.get("preset") != preset or saved.get("seed") != seed:
        raise ConfigError(
            f"'{folder}' holds a run of preset {saved.get('preset')!r} seed "
            f"{saved.get('seed')!r}, not {preset!r} seed {seed}; choose another --out"
        )
    return True


def seed_result(folder):
    """One seed's figures from its run folder, or `None` if it is not complete."""
    run = RunFolder(folder)
    rows = {row["stage"]: row for row in run.stage_rows()}
    if not all(stage in rows for stage in STAGES):
        return None
    config = run.config_dict({}) or {}
    return {
        "teacher": rows["teacher"]["test_accuracy"],
        "student_baseline": rows["student_baseline"]["test_accuracy"],
        "student_distilled": rows["student_distilled"]["test_accuracy"],
        "gain_points": distillation_gain(list(rows.values())),
        "train_seconds": sum(rows[stage].get("train_seconds") or 0.0 for stage in STAGES),
        "precision": config.get("precision"),
        "teacher_precision": config.get("teacher_precision"),
    }


def mean_sd(values):
    """Mean and sample sd of the values that are not None (sd 0 for one)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def clock(seconds):
    """Seconds as m:ss ("" for None)."""
    if seconds is None:
        return ""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def format_seed_table(summary):
    """The Markdown table of a `seeds.json` summary."""
    lines = [
        f"`{summary['command']}`",
        "",
        f"CPU: {summary['machine']}; {summary['date']}.",
        "",
        "| seed | teacher | student baseline | student distilled | gain (points) "
        "| precision / teacher | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    seeds = summary["seeds"]
    for seed, result in seeds.items():
        if result is None:
            lines.append(f"| {seed} | not complete | | | | | |")
            continue
        wall = clock(result.get("wall_seconds"))
        if result.get("resumed"):
            wall += " (resumed)"
        lines.append(
            f"| {seed} | {result['teacher']:.4f} | {result['student_baseline']:.4f} "
            f"| {result['student_distilled']:.4f} | {result['gain_points']:+.2f} "
            f"| {result['precision']} / {result['teacher_precision']} | {wall} |"
        )
    done = [r for r in seeds.values() if r is not None]
    if len(done) == 1:
        (only,) = done
        cells = [f"{only[key]:.4f}" for key in ("teacher", "student_baseline", "student_distilled")]
        cells.append(f"**{only['gain_points']:+.2f}**")
        lines.append("| mean (1 seed, no spread) | " + " | ".join(cells) + " | | |")
    elif done:
        cells = []
        for key in ("teacher", "student_baseline", "student_distilled"):
            mean, sd = mean_sd([r[key] for r in done])
            cells.append(f"{mean:.4f} ± {sd:.4f}")
        mean, sd = mean_sd([r["gain_points"] for r in done])
        cells.append(f"**{mean:+.2f}** ± {sd:.2f}")
        lines.append(f"| mean ± sd ({len(done)} seeds) | " + " | ".join(cells) + " | | |")
    return "\n".join(lines)


def _finish(out, summary):
    atomic.write_json(out / SEEDS_JSON, summary)
    table = format_seed_table(summary)
    atomic.write_text(out / SEEDS_MD, table + "\n")
    return table


def split_extra(argv):
    """`(own flags, run flags)` of a command line: the run flags follow `--`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def run_child(name, argv, on_interrupt):
    """Prints and runs one `kd_keras run` command to its end; returns its
    exit code and wall seconds. On Ctrl-C it waits for the run (which got
    the signal too and stops resumably), calls `on_interrupt`, re-raises."""
    print(f"{name}: " + shlex.join(["python", *argv[1:]]), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(argv)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.wait()
        on_interrupt()
        raise
    return code, time.perf_counter() - started


def main(argv=None):
    argv, extra = split_extra(argv)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.seeds",
        description="Run a preset once per seed and tabulate the distillation gain.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", required=True, help="folder of the seeds' run folders")
    parser.add_argument("--data", help="as kd_keras run --data")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has a seed twice: {args.seeds}")
    for flag in extra:
        if flag.split("=")[0] in RESERVED_FLAGS:
            parser.error(
                f"{flag!r} after -- is set by benchmarks.seeds; use its own "
                "--preset, --seeds, --out and --data"
            )
    run_flags = (["--data", args.data] if args.data else []) + extra

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; give a folder")
    # Checked before anything trains.
    resume = {
        seed: check_seed_folder(seed_folder(out, seed), args.preset, seed) for seed in args.seeds
    }
    out.mkdir(parents=True, exist_ok=True)
    previous = atomic.read_json_object(out / SEEDS_JSON, {}) or {}
    earlier = previous.get("seeds") or {}
    command = ["python", "-m", "benchmarks.seeds", "--preset", args.preset, "--seeds"]
    command += [str(seed) for seed in args.seeds] + ["--out", str(out)]
    command += (["--data", args.data] if args.data else []) + (["--", *extra] if extra else [])
    summary = {
        "command": shlex.join(command),
        "machine": this_machine().describe(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": {str(seed): None for seed in args.seeds},
        # Seeds of an earlier command that this one did not ask for.
        "other_seeds": {
            k: v
            for k, v in {**(previous.get("other_seeds") or {}), **earlier}.items()
            if k not in {str(seed) for seed in args.seeds}
        },
    }

    def recorded(seed):
        """A complete seed's figures, with the wall time recorded when it ran."""
        result = seed_result(seed_folder(out, seed))
        if result is not None:
            old = earlier.get(str(seed)) or {}
            result.update(wall_seconds=old.get("wall_seconds"), resumed=old.get("resumed", False))
        return result

    for seed in args.seeds:
        folder = seed_folder(out, seed)
        result = recorded(seed)
        if result is not None:
            summary["seeds"][str(seed)] = result
            continue
        argv_ = run_argv(args.preset, seed, folder, run_flags, resume=resume[seed])
        code, wall = run_child("benchmarks.seeds", argv_, lambda: _finish(out, summary))
        result = seed_result(folder)
        if code == 0 and result is None:
            print(f"benchmarks.seeds: seed {seed}: '{folder}' is not complete", flush=True)
            code = 1
        if code != 0:
            for later in args.seeds[args.seeds.index(seed) + 1 :]:
                summary["seeds"][str(later)] = recorded(later)
            table = _finish(out, summary)
            print(table)
            print(f"benchmarks.seeds: seed {seed} stopped with exit code {code}", flush=True)
            return code
        result.update(wall_seconds=wall, resumed=resume[seed])
        summary["seeds"][str(seed)] = result
        _finish(out, summary)
    print(_finish(out, summary))
    return 0


if __name__ == "__main__":
    sys.exit(
        run_command("benchmarks.seeds", main, stop_hint="; run the same command again to continue")
    )
