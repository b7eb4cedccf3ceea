"""Training throughput of the distillation step and its speed options.

    python -m benchmarks.throughput [--steps N] [--repeats R] [--batch-size 128]
        [--teacher-depth 32] [--student-depth 14] [--cases a,b,c | all]
        [--out DIR] [--torch]

Every case runs in its own Python process (so its peak resident memory,
`ru_maxrss`, is its own and a thread or precision setting cannot leak into
the next case) on the same synthetic batch: one fixed random uint8 batch of
CIFAR shape, converted to float32 and fed with
`tf.data.Dataset.from_tensors(batch).repeat()`, so the input pipeline is not
part of what is measured (the `input_pipeline` case measures it alone).

Each case first runs `--warmup-steps` steps that are not counted (tracing,
graph optimisation, first allocations), then `--repeats` timed repeats of
`--steps` steps each. Throughput is images per second per repeat; the
report gives the median and the min-max over the repeats.

Every case records its precision (float32, bfloat16 or float16; "student X,
teacher Y" where the two differ). Writes `results.json` (machine, versions,
settings, every case's numbers and, per precision, the reference cases) and
`results.md` (one table per precision, each distillation step's speed
relative to the `keras.distillation.Distiller` case and to the fastest
PyTorch case OF THE SAME PRECISION) into `--out`, and prints the tables.
The float16 cases need a GPU and are skipped, with that reason, elsewhere.
The cases and measured tables: `docs/speed.md`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from benchmarks.throughput_cases import (
    CASES,
    DEFAULT_CASES,
    OPTIONAL_CASES,
    TORCH_CASES,
    case_precision,
    usable_cores,
)
from benchmarks.throughput_report import merge_rounds, write_report
from benchmarks.throughput_worker import run_worker
from kd_keras.hardware import ONEDNN_OPTS_VAR, auto_precisions, enable_onednn_opts, this_machine

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = "runs/benchmark"


def get_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Images/s and peak memory of the distillation step, its "
        "speed options, the Keras reference Distiller and (with --torch) a "
        "PyTorch loop, each in its own process.",
    )
    add_worker_arguments(parser, steps=8, warmup_steps=2, teacher_depth=32, student_depth=14)
    parser.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help="comma-separated case names, or 'all' "
        f"(default: all but {', '.join(OPTIONAL_CASES)} and the torch "
        f"ones). Cases: {', '.join(CASES)}",
    )
    parser.add_argument(
        "--torch",
        action="store_true",
        help="add the PyTorch cases: float32 and CPU autocast bfloat16, float16 where "
        "CUDA is (needs torch: pip install -r requirements-bench.txt)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the whole list of cases this many times, interleaved "
        "(A B C A B C ...), and pool the repeats: a machine whose speed "
        "drifts then slows every case alike (default 1)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds before a case's process is killed (default 900)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    # A worker's intra-op threads instead of its case's, and a folder where
    # `--barrier-count` workers wait for each other before their timed steps
    # (benchmarks.worker_scaling).
    parser.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
    parser.add_argument("--barrier-count", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_worker_arguments(parser, args, also=("rounds",))
    return args


# What a case's worker process is given (`start_case` passes them on): the
# front ends that start workers declare them with `add_worker_arguments`.
WORKER_ARGUMENTS = (
    "steps",
    "repeats",
    "warmup_steps",
    "batch_size",
    "teacher_depth",
    "student_depth",
    "teacher_width",
    "student_width",
)


def add_worker_arguments(parser, *, steps, warmup_steps, teacher_depth, student_depth):
    """Adds `WORKER_ARGUMENTS` to `parser`, with these defaults (3 repeats,
    batch 128, width 16 for both models)."""
    parser.add_argument(
        "--steps", type=int, default=steps, help=f"steps per timed repeat (default {steps})"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=warmup_steps,
        help=f"untimed steps first: tracing, first allocations (default {warmup_steps})",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--teacher-depth", type=int, default=teacher_depth)
    parser.add_argument("--student-depth", type=int, default=student_depth)
    parser.add_argument("--teacher-width", type=int, default=16)
    parser.add_argument("--student-width", type=int, default=16)


def check_worker_arguments(parser, args, also=()):
    """Exits through `parser.error` (status 2, the flag and the value named)
    for a count below 1 among the worker's arguments and `also`."""
    check_counts(parser, args, ("steps", "repeats", "batch_size", *also))
    check_warmup_steps(parser, args.warmup_steps)


def check_counts(parser, args, names):
    """Exits through `parser.error` for the first of `names` below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def check_warmup_steps(parser, warmup_steps):
    """Exits through `parser.error` for fewer than one warm-up step."""
    if warmup_steps < 1:
        parser.error(
            f"--warmup-steps must be >= 1 (the first step traces the graph, and the "
            f"last warm-up step marks where the timing starts), got {warmup_steps}"
        )


def _case_names(args):
    names = (
        list(CASES)
        if args.cases.strip() == "all"
        else [name.strip() for name in args.cases.split(",") if name.strip()]
    )
    unknown = [name for name in names if name not in CASES]
    if unknown:
        raise SystemExit(
            f"benchmarks.throughput: unknown case(s) {', '.join(unknown)}; "
            f"choose from {', '.join(CASES)}"
        )
    if args.torch:
        names += [name for name in TORCH_CASES if name not in names]
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------
# Parent: run every case, write the report
# --------------------------------------------------------------------------
def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info():
    """The machine and the library versions, without importing TensorFlow."""
    machine = this_machine()
    return {
        "cpu_model": machine.cpu_model or platform.processor() or platform.machine(),
        "cpu_flags": machine.speed_flags(),
        "auto_precision": auto_precisions(machine)[:2],
        "tf_enable_onednn_opts": os.environ.get(ONEDNN_OPTS_VAR, ""),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "torch": _version("torch"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _worker_argv(name, args, result_file):
    argv = [sys.executable, "-m", "benchmarks.throughput", "--worker", name]
    argv += ["--result-file", str(result_file)]
    for key in WORKER_ARGUMENTS:
        argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return argv


def start_case(name, args, out, *, label=None, extra_argv=()):
    """Starts one case's worker process (`label` names its files, default
    the case); `finish_case` waits for it and returns its result dict."""
    label = label or name
    result_file = out / "cases" / f"{label}.json"
    log_file = out / "logs" / f"{label}.log"
    result_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    log = open(log_file, "w")  # noqa: SIM115 (closed by finish_case)
    process = subprocess.Popen(
        [*_worker_argv(name, args, result_file), *extra_argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return {
        "name": name,
        "process": process,
        "log": log,
        "log_file": log_file,
        "result_file": result_file,
        "start": time.perf_counter(),
    }


def finish_case(started, timeout):
    """Waits for a `start_case` process (killed after `timeout` seconds
    from its start); returns its result dict."""
    name, process, log_file = started["name"], started["process"], started["log_file"]
    remaining = max(0.0, timeout - (time.perf_counter() - started["start"]))
    try:
        code = process.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = "timeout"
    finally:
        started["log"].close()
    wall = round(time.perf_counter() - started["start"], 1)
    result_file = started["result_file"]
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        result = {
            "case": name,
            "kind": CASES[name]["kind"],
            "what": CASES[name]["what"],
            "precision": case_precision(CASES[name]["kind"], CASES[name]),
            "status": "failed",
            "error": f"exit {code}: " + " | ".join(tail),
        }
    result["wall_s"] = wall
    return result


def run_case(name, args, out):
    """Runs one case in a fresh process; returns its result dict."""
    return finish_case(start_case(name, args, out), args.timeout)


def main(argv=None):
    """Runs the benchmark; returns 0, or 1 if any case failed."""
    args = get_args(argv)
    # Every case's process runs TensorFlow as kd_keras's front ends do
    # (the Keras cases alike): oneDNN kernels on unless the user chose.
    enable_onednn_opts()
    if args.worker:
        result = run_worker(args.worker, args)
        Path(args.result_file).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    names = _case_names(args)
    out = Path(args.out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    settings = {key: getattr(args, key) for key in ("rounds", *WORKER_ARGUMENTS)}
    settings["cases"] = names
    if any(CASES[n]["kind"] == "torch" for n in names) and machine["torch"] is None:
        print(
            "benchmarks.throughput: torch is not installed; skipping the PyTorch "
            "cases (pip install -r requirements-bench.txt)",
            flush=True,
        )
    by_case = {name: [] for name in names}
    skipped = {}
    for round_index in range(1, args.rounds + 1):
        for index, name in enumerate(names, 1):
            if CASES[name]["kind"] == "torch" and machine["torch"] is None:
                skipped[name] = {
                    "case": name,
                    "kind": "torch",
                    "what": CASES[name]["what"],
                    "precision": case_precision("torch", CASES[name]),
                    "status": "skipped",
                    "error": "torch is not installed",
                }
                continue
            prefix = f"[{index}/{len(names)}]" + (
                f" round {round_index}/{args.rounds}" if args.rounds > 1 else ""
            )
            print(f"{prefix} {name} ...", end=" ", flush=True)
            result = run_case(name, args, out)
            if result.get("status") == "ok":
                print(
                    f"{result['median_images_per_s']:.1f} img/s, "
                    f"{result['peak_rss_mib']:.0f} MiB peak ({result['wall_s']:.0f} s)",
                    flush=True,
                )
            else:
                print(f"{result.get('status')}: {result.get('error', '')[:300]}", flush=True)
            by_case[name].append(result)
    results = [skipped[name] if name in skipped else merge_rounds(by_case[name]) for name in names]
    table = write_report(out, machine, settings, results)
    print()
    print(table)
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return 1 if any(r.get("status") == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
