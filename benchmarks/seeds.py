"""The distillation gain over several seeds: one full run per seed, one table.

    python -m benchmarks.seeds --preset quick --seeds 0 1 2 --out runs/seeds
        [--data PATH] [-- MORE RUN FLAGS]

Each seed is a complete `python -m kd_keras run --preset P --seed S` into
`--out/seed<S>`, in its own process (so a precision or thread setting
cannot leak from one seed into the next), one after another: never two
trainings on the same cores. A seed whose run folder is complete is not
run again, and an interrupted one is continued with `--resume`, so the
command can be repeated after an interruption. Flags after `--` go to every
`kd_keras run` unchanged (e.g. `-- --precision float32`).

Writes `seeds.json` (the machine, each seed's rows, wall time and resolved
precisions) and `seeds.md` (the table: teacher, baseline and distilled test
accuracy, the gain in points and the wall time per seed; their mean and
standard deviation; the CPU and its flags) into `--out`, and prints the
table. The wall time of a seed is that of its last `kd_keras run` process
(a resumed seed's earlier process is not counted; the table says so).
"""

import argparse
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from kd_keras import atomic
from kd_keras.config import PRESETS
from kd_keras.hardware import auto_precisions, this_machine
from kd_keras.report.results import distillation_gain
from kd_keras.run_folder import RunFolder
from kd_keras.stages import STAGES

SEEDS_JSON = "seeds.json"
SEEDS_MD = "seeds.md"


def seed_folder(out, seed):
    return Path(out) / f"seed{seed}"


def run_argv(preset, seed, folder, extra, *, resume):
    """The `kd_keras run` command of one seed."""
    argv = [sys.executable, "-m", "kd_keras", "run"]
    if resume:
        return argv + ["--resume", "--out", str(folder), "--quiet"]
    return argv + ["--preset", preset, "--seed", str(seed), "--out", str(folder), "--quiet", *extra]


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


def _mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _clock(seconds):
    if seconds is None:
        return ""
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def format_seed_table(summary):
    """The Markdown table of a `seeds.json` summary."""
    lines = [
        f"`{summary['command']}`",
        "",
        f"Machine: {summary['machine']}; {summary['date']}.",
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
        wall = _clock(result.get("wall_seconds"))
        if result.get("resumed"):
            wall += " (resumed)"
        lines.append(
            f"| {seed} | {result['teacher']:.4f} | {result['student_baseline']:.4f} "
            f"| {result['student_distilled']:.4f} | {result['gain_points']:+.2f} "
            f"| {result['precision']} / {result['teacher_precision']} | {wall} |"
        )
    done = [r for r in seeds.values() if r is not None]
    if done:
        cells = []
        for key in ("teacher", "student_baseline", "student_distilled"):
            mean, sd = _mean_sd([r[key] for r in done])
            cells.append(f"{mean:.4f} ± {sd:.4f}")
        mean, sd = _mean_sd([r["gain_points"] for r in done])
        cells.append(f"**{mean:+.2f}** ± {sd:.2f}")
        lines.append(f"| mean ± sd ({len(done)}) | " + " | ".join(cells) + " | | |")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.seeds",
        description="Run a preset once per seed and tabulate the distillation gain.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", required=True, help="folder of the seeds' run folders")
    parser.add_argument("--data", help="as kd_keras run --data")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has a seed twice: {args.seeds}")
    if args.data:
        extra = ["--data", args.data, *extra]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_file = out / SEEDS_JSON
    previous = atomic.read_json_object(summary_file, {}) or {}
    machine = this_machine()
    summary = {
        "command": " ".join(
            ["python -m benchmarks.seeds", "--preset", args.preset, "--seeds"]
            + [str(s) for s in args.seeds]
            + ["--out", str(out)]
            + (["--", *extra] if extra else [])
        ),
        "machine": machine.describe(),
        "auto_precision": list(auto_precisions(machine)[:2]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": {},
    }
    for seed in args.seeds:
        folder = seed_folder(out, seed)
        result = seed_result(folder)
        if result is None:
            resume = folder.exists() and RunFolder(folder).config_dict(None) is not None
            command = run_argv(args.preset, seed, folder, extra, resume=resume)
            print("benchmarks.seeds: " + " ".join(command[1:]), flush=True)
            started = time.perf_counter()
            code = subprocess.call(command)
            wall = time.perf_counter() - started
            if code != 0:
                print(f"benchmarks.seeds: seed {seed} stopped with exit code {code}", flush=True)
                return code
            result = seed_result(folder)
            result.update(wall_seconds=wall, resumed=resume)
        else:
            # Done before: keep the wall time recorded then.
            old = (previous.get("seeds") or {}).get(str(seed)) or {}
            result.update(wall_seconds=old.get("wall_seconds"), resumed=old.get("resumed", False))
        summary["seeds"][str(seed)] = result
        atomic.write_json(summary_file, summary)
    table = format_seed_table(summary)
    atomic.write_text(out / SEEDS_MD, table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
