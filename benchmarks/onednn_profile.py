"""Where a training step's time goes: oneDNN's own per-primitive timings.

    python -m benchmarks.onednn_profile [--cases kd_distiller,torch_channels_last]
        [--steps 4 --more-steps 12] [--out runs/onednn-profile] [model flags]

TensorFlow (with its oneDNN kernels on, as kd_keras runs it) and PyTorch
both run their convolutions through oneDNN, which times every primitive it
executes when `ONEDNN_VERBOSE=profile_exec` is set. For each case of the
throughput benchmark (`benchmarks.throughput_cases`), this runs the case's
worker three times in fresh processes:

1. without verbose output, for the step time (median of 3 repeats);
2. and 3. with `ONEDNN_VERBOSE=profile_exec`, `--steps` and then
   `--more-steps` timed steps after the same warm-up. The difference of the
   two runs' totals, divided by the difference of their step counts, is the
   oneDNN time of one steady-state step: set-up, tracing, compilation and
   warm-up cancel out.

The report gives, per case and per step, the milliseconds and calls of
each primitive kind and propagation (convolution forward, backward data,
backward weights, batch norm, eltwise, reorder, ...), their sum, and the
step time outside oneDNN (the framework's own kernels, e.g. TensorFlow's
Eigen ops or PyTorch's ATen batch norm, and its per-op overhead). Verbose
output slows a step, so the step time comes from run 1 only. A framework
that runs independent ops at once (TensorFlow's inter-op threads) can sum
to more oneDNN time than the step's wall time; "outside oneDNN" is then a
lower bound of zero or less. Writes `profile.json` and `profile.md` into
`--out`.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import throughput
from benchmarks.throughput_cases import CASES
from kd_keras.hardware import enable_onednn_opts

DEFAULT_CASES = ("kd_distiller", "torch_channels_last")
DEFAULT_OUT = "runs/onednn-profile"
VERBOSE_VAR = "ONEDNN_VERBOSE"


def get_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.onednn_profile",
        description="Per-step oneDNN primitive times of throughput-benchmark cases.",
    )
    parser.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help=f"comma-separated throughput cases (default {','.join(DEFAULT_CASES)})",
    )
    parser.add_argument("--steps", type=int, default=4, help="steps of the first verbose run")
    parser.add_argument(
        "--more-steps", type=int, default=12, help="steps of the second verbose run"
    )
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--teacher-depth", type=int, default=32)
    parser.add_argument("--student-depth", type=int, default=14)
    parser.add_argument("--teacher-width", type=int, default=16)
    parser.add_argument("--student-width", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if not 1 <= args.steps < args.more_steps:
        parser.error(f"need 1 <= --steps < --more-steps, got {args.steps} and {args.more_steps}")
    throughput.check_counts(parser, args, ("batch_size",))
    throughput.check_warmup_steps(parser, args.warmup_steps)
    return args


def parse_verbose(lines):
    """Totals of oneDNN's `profile_exec` lines: `{(kind, propagation):
    [milliseconds, calls]}`.

    A primitive line reads `onednn_verbose,v1,primitive,exec,cpu,<kind>,
    <implementation>,<propagation>,...,<milliseconds>`; a graph API line
    `onednn_verbose,v1,graph,exec,cpu,<partition id>,<partition kind>,...`.
    Older oneDNN versions omit the `v1` field. Other lines are ignored.
    """
    totals = collections.defaultdict(lambda: [0.0, 0])
    for line in lines:
        if not line.startswith("onednn_verbose,"):
            continue
        fields = line.rstrip("\n").split(",")
        if len(fields) > 1 and fields[1] == "v1":
            fields = fields[:1] + fields[2:]
        if len(fields) < 8 or fields[2] != "exec":
            continue
        try:
            milliseconds = float(fields[-1])
        except ValueError:
            continue
        if fields[1] == "primitive":
            key = (fields[4], fields[6])
        elif fields[1] == "graph":
            key = ("graph:" + fields[5], "")
        else:
            continue
        totals[key][0] += milliseconds
        totals[key][1] += 1
    return dict(totals)


def per_step(few, many, steps):
    """`{(kind, propagation): (ms per step, calls per step)}` from two runs'
    totals that differ by `steps` steps."""
    keys = sorted(set(few) | set(many))
    result = {}
    for key in keys:
        ms = (many.get(key, [0.0, 0])[0] - few.get(key, [0.0, 0])[0]) / steps
        calls = (many.get(key, [0.0, 0])[1] - few.get(key, [0.0, 0])[1]) / steps
        if calls > 0 or ms > 0:
            result[key] = (ms, calls)
    return result


def _worker(name, args, out, *, steps, repeats, verbose):
    """Runs the case's throughput worker; returns (result dict, log path)."""
    tag = f"{name}-{'verbose' if verbose else 'timed'}-{steps}"
    result_file = out / "cases" / f"{tag}.json"
    log_file = out / "logs" / f"{tag}.log"
    result_file.unlink(missing_ok=True)
    worker_args = argparse.Namespace(**vars(args))
    worker_args.steps, worker_args.repeats = steps, repeats
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(throughput.REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.pop(VERBOSE_VAR, None)
    if verbose:
        env[VERBOSE_VAR] = "profile_exec"
    with open(log_file, "w") as log:
        code = subprocess.run(
            throughput._worker_argv(name, worker_args, result_file),
            cwd=throughput.REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=args.timeout,
        ).returncode
    if code != 0 or not result_file.is_file():
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"case {name} failed (exit {code}): {' | '.join(tail)}")
    return json.loads(result_file.read_text()), log_file


def profile_case(name, args, out):
    """The per-step profile of one case (see the module docstring)."""
    timed, _ = _worker(name, args, out, steps=args.more_steps, repeats=3, verbose=False)
    if timed.get("status") != "ok":
        return {"case": name, "status": timed.get("status"), "error": timed.get("error")}
    totals = []
    for steps in (args.steps, args.more_steps):
        _, log = _worker(name, args, out, steps=steps, repeats=1, verbose=True)
        with open(log, errors="replace") as lines:
            totals.append(parse_verbose(lines))
    primitives = per_step(totals[0], totals[1], args.more_steps - args.steps)
    step_ms = args.batch_size / timed["median_images_per_s"] * 1000
    onednn_ms = sum(ms for ms, _ in primitives.values())
    return {
        "case": name,
        "status": "ok",
        "what": CASES[name]["what"],
        "precision": timed.get("precision"),
        "images_per_s": timed["median_images_per_s"],
        "step_ms": round(step_ms, 2),
        "onednn_ms": round(onednn_ms, 2),
        "outside_onednn_ms": round(step_ms - onednn_ms, 2),
        "onednn_calls": round(sum(c for _, c in primitives.values()), 1),
        "primitives": [
            {"kind": k, "propagation": p, "ms": round(ms, 3), "calls": round(c, 2)}
            for (k, p), (ms, c) in sorted(primitives.items(), key=lambda kv: -kv[1][0])
        ],
    }


def format_report(machine, args, profiles):
    lines = [
        f"CPU: {machine['cpu_model']} ({' '.join(machine['cpu_flags']) or 'no avx2/avx512/amx'}); "
        f"{machine['usable_cores']} cores; TensorFlow {machine['tensorflow']}, "
        f"torch {machine['torch']}; {machine['date'][:10]}; "
        f"TF_ENABLE_ONEDNN_OPTS={machine['tf_enable_onednn_opts'] or 'unset'}.",
        f"Batch {args.batch_size}; ResNet-{args.teacher_depth} (width {args.teacher_width}) -> "
        f"ResNet-{args.student_depth} (width {args.student_width}); per step: the "
        f"difference of {args.more_steps}- and {args.steps}-step runs under "
        f"{VERBOSE_VAR}=profile_exec; step time from a run without it.",
        "",
        "| case | precision | img/s | step ms | in oneDNN ms | outside oneDNN ms | oneDNN calls |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in profiles:
        if p["status"] != "ok":
            lines.append(f"| {p['case']} | {p['status']}: {p.get('error')} | | | | | |")
            continue
        lines.append(
            f"| {p['case']} | {p['precision']} | {p['images_per_s']:.1f} | {p['step_ms']:.1f} | "
            f"{p['onednn_ms']:.1f} | {p['outside_onednn_ms']:.1f} | {p['onednn_calls']:.0f} |"
        )
    kinds = []
    for p in profiles:
        for row in p.get("primitives", []):
            key = (row["kind"], row["propagation"])
            if key not in kinds:
                kinds.append(key)
    ok = [p for p in profiles if p["status"] == "ok"]
    if ok:
        lines += [
            "",
            "Per step, ms (calls), by oneDNN primitive and propagation:",
            "",
            "| primitive | " + " | ".join(p["case"] for p in ok) + " |",
            "|---" * (len(ok) + 1) + "|",
        ]
        for kind, propagation in kinds:
            cells = []
            for p in ok:
                row = next(
                    (
                        r
                        for r in p["primitives"]
                        if (r["kind"], r["propagation"]) == (kind, propagation)
                    ),
                    None,
                )
                cells.append(f"{row['ms']:.2f} ({row['calls']:.0f})" if row else "–")
            label = f"{kind} {propagation}".strip()
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = get_args(argv)
    enable_onednn_opts()
    out = Path(args.out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    machine = throughput.machine_info()
    profiles = []
    for index, name in enumerate(args.cases, 1):
        print(f"[{index}/{len(args.cases)}] {name} ...", flush=True)
        try:
            profiles.append(profile_case(name, args, out))
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            profiles.append({"case": name, "status": "failed", "error": str(error)[:300]})
    report = format_report(machine, args, profiles)
    (out / "profile.json").write_text(
        json.dumps({"machine": machine, "settings": vars(args), "profiles": profiles}, indent=2)
        + "\n"
    )
    (out / "profile.md").write_text(report)
    print(report)
    print(f"wrote {out / 'profile.json'} and {out / 'profile.md'}")
    return 1 if any(p["status"] != "ok" for p in profiles) else 0


if __name__ == "__main__":
    sys.exit(main())
