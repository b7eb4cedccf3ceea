"""Trials per hour of a search: one process with every core against one
single-thread worker per core (Keras Tuner's distributed mode).

    python -m benchmarks.search_workers --teacher T.keras --data ARCHIVE
        [--preset quick] [--trials 6] [--epochs 2] [--out runs/search-workers]

Runs the same search (`python -m tuning`: the preset's data and student,
random tuner, the same seed) twice, one after the other, into
`--out/one-process` and `--out/workers` (`--workers CORES`, one intra-op
thread each). The one process runs as `python -m tuning` does by default,
with TensorFlow's own threading (intra-op threads on every core, and
independent ops at once: inter-op parallelism); `--one-process-threads
cores` runs it with `--threads CORES` instead (intra-op CORES, inter-op
1, which ran the float32 distillation step at 0.64x here: see
docs/speed.md). Each search's wall time is
that of its whole command (start-up, data, the teacher's cached logits,
every trial); trials per hour are its completed trials over that time.
Writes `search_workers.json` (the commands, the CPU, both searches'
figures and the ratio) and `search_workers.md` into `--out`, and prints the
table. Run it with nothing else on the machine: the point is how the cores
are shared.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from kd_keras import atomic
from kd_keras.hardware import this_machine
from kd_keras.search_folder import TRIAL_COMPLETED, SearchFolder

RESULTS_JSON = "search_workers.json"
RESULTS_MD = "search_workers.md"


def search_argv(args, folder, layout, cores):
    """The `python -m tuning` command of one layout ("one-process" or "workers")."""
    argv = [sys.executable, "-m", "tuning", "--teacher", str(args.teacher), "--out", str(folder)]
    argv += ["--preset", args.preset, "--tuner", "random", "--trials", str(args.trials)]
    argv += ["--epochs", str(args.epochs), "--seed", str(args.seed), "--quiet"]
    if args.data:
        argv += ["--data", str(args.data)]
    if layout == "workers":
        return argv + ["--workers", str(cores)]
    if getattr(args, "one_process_threads", "tensorflow") == "cores":
        return argv + ["--threads", str(cores)]
    return argv  # TensorFlow's own threading, as a plain `python -m tuning`.


def run_search(argv):
    """Runs one search; returns its wall seconds (it must succeed)."""
    start = time.monotonic()
    subprocess.run(argv, check=True)
    return time.monotonic() - start


def search_figures(folder, seconds):
    """Completed trials, their mean seconds and the trials per hour of a search."""
    trials = SearchFolder(folder).trials()
    done = [t for t in trials if t.get("status") == TRIAL_COMPLETED]
    trial_seconds = [t["seconds"] for t in done if t.get("seconds")]
    settings = SearchFolder(folder).settings() or {}
    workers = sorted(set((settings.get("workers") or {}).values()))
    return {
        "wall_seconds": round(seconds, 1),
        "completed_trials": len(done),
        "mean_trial_seconds": round(sum(trial_seconds) / len(trial_seconds), 1)
        if trial_seconds
        else None,
        "trials_per_hour": round(len(done) / seconds * 3600, 2) if seconds else None,
        "workers_seen": workers,
    }


def format_table(summary):
    rows = summary["searches"]
    lines = [
        f"CPU: {summary['machine']}; {summary['cores']} cores; {summary['date']}.",
        f"Search: preset {summary['preset']}, {summary['trials']} trials of "
        f"{summary['epochs']} epochs, random tuner, seed {summary['seed']}.",
        "",
        "| layout | wall time (s) | completed trials | mean trial (s) | trials/hour |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        (
            "one-process",
            f"1 process x {summary['cores']} threads"
            + (
                ", TensorFlow's threading"
                if summary.get("one_process_threads") == "tensorflow"
                else ", --threads (inter-op 1)"
                if summary.get("one_process_threads") == "cores"
                else ""
            ),
        ),
        ("workers", f"{summary['cores']} workers x 1 thread"),
    ):
        r = rows[name]
        lines.append(
            f"| {label} | {r['wall_seconds']} | {r['completed_trials']} | "
            f"{r['mean_trial_seconds']} | {r['trials_per_hour']} |"
        )
    lines += ["", f"Workers / one process: {summary['ratio']}x the trials per hour."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.search_workers",
        description="Trials per hour of one multi-thread search process against "
        "single-thread workers (Keras Tuner's distributed mode), same search.",
    )
    parser.add_argument("--teacher", required=True, help="trained teacher .keras file")
    parser.add_argument("--data", help="the data (default: $KD_KERAS_CIFAR10)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cores", type=int, default=None, help="cores to share (default: this machine's)"
    )
    parser.add_argument(
        "--one-process-threads",
        choices=("tensorflow", "cores"),
        default="tensorflow",
        help="the one process's threading: TensorFlow's own (default, as `python -m tuning` "
        "runs) or --threads CORES (inter-op 1)",
    )
    parser.add_argument("--out", default="runs/search-workers")
    args = parser.parse_args(argv)
    cores = args.cores or len(os.sched_getaffinity(0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    searches, commands = {}, {}
    for layout in ("one-process", "workers"):
        folder = out / layout
        if folder.exists() and any(folder.iterdir()):
            print(f"benchmarks.search_workers: '{folder}' is not empty; choose another --out")
            return 2
        command = search_argv(args, folder, layout, cores)
        commands[layout] = " ".join(command[1:])
        print(f"benchmarks.search_workers: {commands[layout]}", flush=True)
        searches[layout] = search_figures(folder, run_search(command))
    one, many = searches["one-process"]["trials_per_hour"], searches["workers"]["trials_per_hour"]
    summary = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": this_machine().describe(),
        "cores": cores,
        "preset": args.preset,
        "trials": args.trials,
        "epochs": args.epochs,
        "seed": args.seed,
        "one_process_threads": args.one_process_threads,
        "commands": commands,
        "searches": searches,
        "ratio": round(many / one, 2) if one and many else None,
    }
    atomic.write_text(out / RESULTS_JSON, json.dumps(summary, indent=2) + "\n")
    table = format_table(summary)
    atomic.write_text(out / RESULTS_MD, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
