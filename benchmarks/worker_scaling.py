"""Will `python -m tuning --workers N` pay on this machine? One process's
training step with TensorFlow's threading against N single-thread
processes stepping at once.

    python -m benchmarks.worker_scaling [--workers N] [--case student_train]
        [--student-depth 8] [--student-width 16] [--batch-size 128]
        [--steps 40] [--repeats 3] [--rounds 3] [--out runs/worker-scaling]

A search's trial is mostly training steps, so the images per second of N
single-thread processes together, over those of one process on every core,
is about the most N single-thread workers can gain over one search process
for trials of that model (their fixed costs, start-up and data, come on
top). It takes about a minute, where the search itself
(`benchmarks.search_workers`) takes the better part of an hour.

Each process is a `benchmarks.throughput` case worker (default
`student_train`, with the quick preset's ResNet-8 student, width 16: the
search's trials train it on the teacher's cached logits, so their step is
this one plus a distillation loss) on its one synthetic batch. The one
process runs alone with TensorFlow's own threading (intra-op threads on
every core, inter-op parallelism), as `python -m tuning` runs; then N
processes run with one intra-op thread and inter-op 1 each, as `--workers N`
starts them, and wait for each other after their warm-up steps so their
timed steps run together (the report gives how much their timed windows
overlap). `--rounds` repeats the pair and reports the median ratio and its
range: on a host whose speed drifts over seconds, one round can be off by
several per cent. Writes `worker_scaling.json` and `worker_scaling.md` into
`--out` and prints the table. Run it with nothing else on the machine.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.throughput import (
    WORKER_ARGUMENTS,
    add_worker_arguments,
    check_worker_arguments,
    finish_case,
    machine_info,
    start_case,
)
from benchmarks.throughput_cases import CASES, usable_cores
from kd_keras import atomic
from kd_keras.hardware import enable_onednn_opts

RESULTS_JSON = "worker_scaling.json"
RESULTS_MD = "worker_scaling.md"
TRAINING_KINDS = ("train", "distill", "keras_distill")


def get_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.worker_scaling",
        description="Images/s of one process with TensorFlow's threading against N "
        "single-thread processes at once: the most `python -m tuning --workers N` "
        "can gain here for trials of this model.",
    )
    cores = usable_cores()
    parser.add_argument(
        "--workers", type=int, default=cores, help=f"single-thread processes (default {cores})"
    )
    cases = [name for name, case in CASES.items() if case["kind"] in TRAINING_KINDS]
    parser.add_argument(
        "--case",
        default="student_train",
        choices=cases,
        help="the benchmarks.throughput case each process runs (default student_train)",
    )
    add_worker_arguments(parser, steps=40, warmup_steps=3, teacher_depth=20, student_depth=8)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of one process, then the single-thread ones; the ratio is their "
        "median, so a machine whose speed drifts shows it (default 3)",
    )
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default="runs/worker-scaling")
    args = parser.parse_args(argv)
    check_worker_arguments(parser, args, also=("workers", "rounds"))
    return args


def finish_together(started, timeout):
    """Waits for processes started together (`start_case`); once one fails,
    the others, which would wait for it at the barrier, are stopped."""
    deadline = time.monotonic() + timeout
    processes = [s["process"] for s in started]
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in processes):
            for process in processes:
                if process.poll() is None:
                    process.kill()
            break
        time.sleep(0.2)
    return [finish_case(s, timeout) for s in started]


def overlap(windows):
    """The share of the shortest timed window during which every process
    was in its timed steps (1.0: all at once; 0: never together)."""
    starts, ends = [w[0] for w in windows], [w[1] for w in windows]
    shortest = min(end - start for start, end in windows)
    return round(max(0.0, min(ends) - max(starts)) / shortest, 3) if shortest > 0 else 0.0


def summarise(one, workers):
    """The figures of one process and of the N processes together."""
    failed = [r for r in [one, *workers] if r.get("status") != "ok"]
    if failed:
        raise RuntimeError(
            "benchmarks.worker_scaling: a process failed: "
            + "; ".join(str(r.get("error", ""))[:300] for r in failed)
        )
    together = sum(r["median_images_per_s"] for r in workers)
    return {
        "one_process": {
            "images_per_s": one["median_images_per_s"],
            "step_ms": one["step_ms"],
            "threads": "TensorFlow's (intra-op and inter-op)",
        },
        "workers": {
            "count": len(workers),
            "images_per_s_each": [r["median_images_per_s"] for r in workers],
            "step_ms_each": [r["step_ms"] for r in workers],
            "images_per_s_together": round(together, 2),
            "threads": "1 each (intra-op 1, inter-op 1)",
            "timed_overlap": overlap([r["timed_window"] for r in workers]),
        },
        "ratio": round(together / one["median_images_per_s"], 2),
    }


def format_table(summary):
    machine, rounds = summary["machine"], summary["rounds"]
    count = rounds[0]["workers"]["count"]
    flags = " ".join(machine["cpu_flags"]) or "no avx2/avx512/amx flags"
    settings = summary["settings"]
    lines = [
        f"CPU: {machine['cpu_model']} ({flags}); {machine['usable_cores']} usable cores; "
        f"TensorFlow {machine['tensorflow']}; {machine['date'][:10]}.",
        f"Case `{summary['case']}`, batch {settings['batch_size']}, "
        f"{settings['repeats']} x {settings['steps']} timed steps a process; "
        f"{len(rounds)} round(s), each one process alone, then {count} at once.",
        "",
        f"| round | 1 process, TensorFlow's threading (img/s) | {count} single-thread processes "
        "at once, each (img/s) | together (img/s) | together / 1 process | timed steps "
        "overlapping |",
        "|---|---|---|---|---|---|",
    ]
    for index, figures in enumerate(rounds, 1):
        one, workers = figures["one_process"], figures["workers"]
        each = ", ".join(str(rate) for rate in workers["images_per_s_each"])
        lines.append(
            f"| {index} | {one['images_per_s']} | {each} | {workers['images_per_s_together']} | "
            f"{figures['ratio']}x | {workers['timed_overlap']:.0%} |"
        )
    low, high = summary["ratio_range"]
    lines += [
        "",
        f"{count} single-thread processes / 1 process: **{summary['ratio']}x** the images per "
        f"second (median of {len(rounds)} round(s), {low}-{high}x): about the most "
        f"`python -m tuning --workers {count}` gains over one process here, for trials of "
        "this model, before the workers' fixed costs.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = get_args(argv)
    enable_onednn_opts()  # As kd_keras's front ends run TensorFlow.
    out = Path(args.out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    rounds, processes = [], []
    for index in range(1, args.rounds + 1):
        tag = f"{args.case}-round{index}"
        print(f"benchmarks.worker_scaling: round {index}, 1 process alone ...", flush=True)
        one = finish_case(start_case(args.case, args, out, label=f"{tag}-one"), args.timeout)
        print(f"benchmarks.worker_scaling: round {index}, {args.workers} at once ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="barrier-", dir=out) as barrier:
            extra = ["--worker-threads", "1", "--barrier", barrier]
            extra += ["--barrier-count", str(args.workers)]
            started = [
                start_case(args.case, args, out, label=f"{tag}-worker{i}", extra_argv=extra)
                for i in range(1, args.workers + 1)
            ]
            workers = finish_together(started, args.timeout)
        rounds.append(summarise(one, workers))
        processes.append({"one_process": one, "workers": workers})
    ratios = [figures["ratio"] for figures in rounds]
    settings = {key: getattr(args, key) for key in ("workers", "rounds", *WORKER_ARGUMENTS)}
    summary = {
        "command": "python -m benchmarks.worker_scaling " + " ".join(argv or sys.argv[1:]),
        "case": args.case,
        "machine": machine,
        "settings": settings,
        "ratio": round(statistics.median(ratios), 2),
        "ratio_range": [min(ratios), max(ratios)],
        "rounds": rounds,
        "processes": processes,
    }
    atomic.write_text(out / RESULTS_JSON, json.dumps(summary, indent=2) + "\n")
    table = format_table(summary)
    atomic.write_text(out / RESULTS_MD, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
