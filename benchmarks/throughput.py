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
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from kd_keras.hardware import auto_precisions, this_machine

REPO_ROOT = Path(__file__).resolve().parent.parent
# The Hinton KD step the --method cases are compared with (same precision).
KD_CASE = "kd_distiller"
DEFAULT_OUT = "runs/benchmark"


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not Linux.
        return os.cpu_count() or 1


# Case name -> what it runs. Kinds: "input" (the tf.data pipeline alone),
# "train" (Keras fit of one model), "forward" (compiled inference),
# "distill" (kd_keras.Distiller), "keras_distill"
# (keras.distillation.Distiller), "torch" (benchmarks.torch_resnet).
# Options: precision (of the student), teacher_precision, spe
# (steps_per_execution), jit (jit_compile), threads (intra-op; inter-op 1),
# fused (FusedBatchNormalization, default True; the built-in Distiller's
# models always use stock layers), fold (fold the teacher's batch norm,
# default True). The models (seeded), the optimizer and the compile
# arguments are a run's (kd_keras.train.recipe); only these options differ.
CASES = {
    "input_pipeline": {
        "kind": "input",
        "what": "kd_keras.make_dataset alone (shuffle, pad-crop, flip, batch) "
        "on random uint8 images",
    },
    "teacher_train": {
        "kind": "train",
        "model": "teacher",
        "what": "teacher, Keras fit, SGD + cross-entropy",
    },
    "student_train": {
        "kind": "train",
        "model": "student",
        "what": "student, Keras fit, SGD + cross-entropy (fused batch norm)",
    },
    "student_train_keras_bn": {
        "kind": "train",
        "model": "student",
        "fused": False,
        "what": "student_train with stock keras BatchNormalization",
    },
    "teacher_inference": {
        "kind": "forward",
        "model": "teacher",
        "what": "teacher forward pass, tf.function, training=False, "
        "batch norm folded (as when distilling)",
    },
    "teacher_inference_unfolded": {
        "kind": "forward",
        "model": "teacher",
        "fold": False,
        "what": "teacher forward pass, batch norm not folded",
    },
    "teacher_inference_bf16": {
        "kind": "forward",
        "model": "teacher",
        "teacher_precision": "bfloat16",
        "what": "teacher forward pass, folded, bfloat16 compute",
    },
    "kd_distiller_auto": {
        "kind": "distill",
        "precision": "auto",
        "teacher_precision": "auto",
        "what": "the default step: kd_keras.Distiller with precision and "
        "teacher precision 'auto', resolved on this machine (fused batch "
        "norm, folded teacher)",
    },
    "kd_distiller": {
        "kind": "distill",
        "what": "kd_keras.Distiller step, float32 (fused batch norm, folded teacher)",
    },
    "kd_distiller_keras_bn": {
        "kind": "distill",
        "fused": False,
        "fold": False,
        "what": "kd_keras.Distiller step, float32, stock keras "
        "BatchNormalization, unfolded teacher",
    },
    "keras_distiller": {
        "kind": "keras_distill",
        "what": "keras.distillation.Distiller + LogitsDistillation(T=4, KLDivergence), "
        "student_loss_weight=0.3, stock Keras layers",
    },
    "kd_distiller_bf16": {
        "kind": "distill",
        "precision": "mixed_bfloat16",
        "what": "student under mixed_bfloat16 (losses float32)",
    },
    "kd_distiller_teacher_bf16": {
        "kind": "distill",
        "teacher_precision": "bfloat16",
        "what": "student float32, teacher inference in bfloat16",
    },
    "kd_distiller_bf16_both": {
        "kind": "distill",
        "precision": "mixed_bfloat16",
        "teacher_precision": "bfloat16",
        "what": "student mixed_bfloat16 + teacher bfloat16",
    },
    "kd_distiller_spe4": {"kind": "distill", "spe": 4, "what": "steps_per_execution=4"},
    "kd_distiller_jit": {"kind": "distill", "jit": True, "what": "jit_compile=True (XLA)"},
    "kd_distiller_threads": {
        "kind": "distill",
        "threads": "cores",
        "what": "intra-op threads = cores, inter-op 1",
    },
    "kd_distiller_spe4_threads": {
        "kind": "distill",
        "spe": 4,
        "threads": "cores",
        "what": "steps_per_execution=4 + threads",
    },
    "kd_distiller_teacher_bf16_spe4_threads": {
        "kind": "distill",
        "teacher_precision": "bfloat16",
        "spe": 4,
        "threads": "cores",
        "what": "teacher bfloat16 + steps_per_execution=4 + threads",
    },
    "kd_distiller_bf16_all": {
        "kind": "distill",
        "precision": "mixed_bfloat16",
        "teacher_precision": "bfloat16",
        "spe": 4,
        "threads": "cores",
        "what": "student mixed_bfloat16 + teacher bfloat16 + steps_per_execution=4 + threads",
    },
    "kd_distiller_jit_spe4": {
        "kind": "distill",
        "jit": True,
        "spe": 4,
        "what": "jit_compile=True + steps_per_execution=4",
    },
    # One case per --method (docs/methods.md): the step's cost relative to
    # Hinton KD's (`kd_distiller`), as the "what" column reports it.
    "kd_method_ls": {
        "kind": "distill",
        "method": "hinton",
        "logit_standardization": True,
        "what": "--method hinton --logit-standardization, float32",
    },
    "kd_method_dkd": {"kind": "distill", "method": "dkd", "what": "--method dkd, float32"},
    "kd_method_fitnets": {
        "kind": "distill",
        "method": "fitnets",
        "what": "--method fitnets (stage2 hint, 1x1 conv adapter), float32",
    },
    "kd_method_at": {
        "kind": "distill",
        "method": "at",
        "what": "--method at (three stage ends), float32",
    },
    "torch_nchw": {"kind": "torch", "what": "PyTorch loop, NCHW"},
    "torch_channels_last": {"kind": "torch", "what": "PyTorch loop, channels_last"},
    "torch_channels_last_compile": {
        "kind": "torch",
        "what": "PyTorch loop, channels_last + torch.compile",
    },
    # Like for like at the other precisions kd_keras runs (ratios are taken
    # only between cases of equal precision, see `report_groups`).
    "keras_distiller_bf16": {
        "kind": "keras_distill",
        "precision": "mixed_bfloat16",
        "teacher_precision": "bfloat16",
        "what": "keras_distiller with both models built under mixed_bfloat16 "
        "(logits and losses float32)",
    },
    "torch_channels_last_bf16": {
        "kind": "torch",
        "precision": "bfloat16",
        "what": "PyTorch loop, channels_last, CPU autocast bfloat16 (losses float32)",
    },
    "torch_channels_last_compile_bf16": {
        "kind": "torch",
        "precision": "bfloat16",
        "what": "PyTorch loop, channels_last + torch.compile, CPU autocast bfloat16 "
        "(losses float32)",
    },
    "kd_distiller_fp16_both": {
        "kind": "distill",
        "precision": "mixed_float16",
        "teacher_precision": "float16",
        "gpu": True,
        "what": "student mixed_float16 + teacher float16 (GPU only)",
    },
    "keras_distiller_fp16": {
        "kind": "keras_distill",
        "precision": "mixed_float16",
        "teacher_precision": "float16",
        "gpu": True,
        "what": "keras_distiller with both models under mixed_float16 (GPU only)",
    },
    "torch_channels_last_fp16": {
        "kind": "torch",
        "precision": "float16",
        "gpu": True,
        "what": "PyTorch loop, channels_last, CUDA autocast float16 + GradScaler (GPU only)",
    },
    "torch_channels_last_compile_fp16": {
        "kind": "torch",
        "precision": "float16",
        "gpu": True,
        "what": "PyTorch loop, channels_last + torch.compile, CUDA autocast float16 "
        "+ GradScaler (GPU only)",
    },
}
TORCH_CASES = tuple(name for name, case in CASES.items() if case["kind"] == "torch")
# Left out by default to keep a full run under ~8 minutes on 2 cores; `all`
# or --cases runs them.
OPTIONAL_CASES = ("kd_distiller_jit_spe4",)
DEFAULT_CASES = tuple(
    name for name in CASES if name not in TORCH_CASES and name not in OPTIONAL_CASES
)
DISTILL_KINDS = ("distill", "keras_distill", "torch")
# A Keras precision or policy -> the arithmetic it runs in.
ARITHMETIC = {
    "float32": "float32",
    "mixed_bfloat16": "bfloat16",
    "bfloat16": "bfloat16",
    "mixed_float16": "float16",
    "float16": "float16",
}
# Tables of the report, in this order; then any other precision label, then
# the cases without a model.
PRECISION_ORDER = ("float32", "bfloat16", "float16")
NO_MODEL = "no model"


def case_precision(kind, options):
    """The precision a case computes in: "float32", "bfloat16" or "float16"
    when every model it runs does; "student X, teacher Y" when they differ;
    None for the input pipeline. `options` holds `precision` and
    `teacher_precision` (a Keras case's, resolved) or a torch case's
    `precision`."""
    if kind == "input":
        return None
    student = options.get("precision", "float32")
    student = ARITHMETIC.get(student, student)
    if kind in ("torch", "train"):
        return student
    teacher = options.get("teacher_precision", "float32")
    teacher = ARITHMETIC.get(teacher, teacher)
    if kind == "forward":
        return teacher
    return student if student == teacher else f"student {student}, teacher {teacher}"


def get_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="Images/s and peak memory of the distillation step, its "
        "speed options, the Keras reference Distiller and (with --torch) a "
        "PyTorch loop, each in its own process.",
    )
    parser.add_argument("--steps", type=int, default=8, help="steps per timed repeat (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (default 3)")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=2,
        help="untimed steps first: tracing, first allocations (default 2)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--teacher-depth", type=int, default=32)
    parser.add_argument("--student-depth", type=int, default=14)
    parser.add_argument("--teacher-width", type=int, default=16)
    parser.add_argument("--student-width", type=int, default=16)
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
    args = parser.parse_args(argv)
    for name in ("steps", "repeats", "batch_size", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    return args


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


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


# --------------------------------------------------------------------------
# Worker: one case, in its own process
# --------------------------------------------------------------------------
def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def _synthetic_batch(batch_size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(batch_size,)).astype("int32")
    return images.astype("float32"), labels


def _keras_setup(case, args, images, labels):
    """Builds the case's models; returns `run(steps)` and settings to report.

    `run(steps)` returns the last step's logs; a Keras `fit` case also has
    `run.timed(warmup, steps, repeats, batch_size)` (see `_fit_runner`).
    """
    import kd_keras  # noqa: F401  (first: sets KERAS_BACKEND)

    kind = case["kind"]
    if kind == "input":
        return _input_case(args)
    config = _case_config(case, args)
    if kind == "forward":
        return _forward_case(case, config, images), {}
    makers = {"train": _train_case, "distill": _distill_case, "keras_distill": _keras_distill_case}
    if kind not in makers:
        raise ValueError(
            f"unknown case kind {kind!r}; choose from input, forward, {', '.join(makers)}"
        )
    return _fit_runner(makers[kind](case, config), images, labels), {}


def _input_case(args):
    """The `input` case: `kd_keras.make_dataset` alone, on random uint8 images."""
    import numpy as np

    import kd_keras

    rng = np.random.default_rng(1)
    count = 10000  # The quick preset's training set size.
    data = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 10, size=(count,)).astype("int32")
    dataset = kd_keras.make_dataset(
        data, targets, batch_size=args.batch_size, training=True, seed=0
    ).repeat()
    iterator = iter(dataset)

    def run(steps):
        for _ in range(steps):
            batch = next(iterator)
        return {"first_pixel": float(batch[0][0, 0, 0, 0])}

    return run, {"dataset_images": count}


def _case_config(case, args):
    """The `RunConfig` a case trains with: the benchmark's depths, widths and
    batch size, the case's (resolved) precisions, and the recipe's defaults
    for everything else (optimizer, T, alpha, seed)."""
    from kd_keras.config import RunConfig

    return RunConfig(
        teacher_depth=args.teacher_depth,
        teacher_width=args.teacher_width,
        student_depth=args.student_depth,
        student_width=args.student_width,
        batch_size=args.batch_size,
        precision=case.get("precision", "float32"),
        teacher_precision=case.get("teacher_precision", "float32"),
        method=case.get("method", "hinton"),
        logit_standardization=case.get("logit_standardization", False),
    )


def _model(role, config, *, fused, precision=None):
    """The recipe's seeded teacher or student of `config` (CIFAR-sized), with
    `FusedBatchNormalization` or (`fused=False`) stock batch norm, built in
    `precision` (default `config.precision`)."""
    from kd_keras.train import recipe

    build = recipe.build_teacher if role == "teacher" else recipe.build_student
    return build(config, precision=precision, fused_batch_norm=fused)


def _optimizer(config):
    """The recipe's optimizer, its schedule sized as for 10 epochs of 1000
    steps (the timed steps fall in the warm-up)."""
    from kd_keras.train.recipe import make_optimizer

    return make_optimizer(config, 1000, 10)


def _compile_options(case):
    return {"steps_per_execution": case.get("spe", 1), "jit_compile": case.get("jit", False)}


def _inference_teacher(case, config):
    """A float32-built teacher as it runs while distilling: batch norm folded
    unless the case says not, in the case's teacher precision."""
    from kd_keras.distill.teacher import teacher_for_inference

    teacher = _model("teacher", config, fused=case.get("fused", True), precision="float32")
    return teacher_for_inference(teacher, config.teacher_precision, fold=case.get("fold", True))


def _forward_case(case, config, images):
    """The `forward` case: the frozen teacher's compiled forward pass."""
    import tensorflow as tf

    teacher = _inference_teacher(case, config)
    forward = tf.function(
        lambda batch: teacher(batch, training=False), jit_compile=case.get("jit", False)
    )
    x = tf.constant(images)

    def run(steps):
        for _ in range(steps):
            logits = forward(x)
        return {"first_logit": float(logits.numpy()[0, 0])}

    return run


def _train_case(case, config):
    """The `train` case: one model with the recipe's cross-entropy and
    optimizer, as a pipeline stage trains it."""
    from kd_keras.train.recipe import compile_classifier

    model = _model(case["model"], config, fused=case.get("fused", True))
    return compile_classifier(model, _optimizer(config), **_compile_options(case))


def _distill_case(case, config):
    """The `distill` case: `kd_keras.Distiller` compiled as the pipeline
    compiles it (T and alpha of the config), with the student in the case's
    precision and the teacher as `_inference_teacher` makes it."""
    from kd_keras.train.recipe import compile_distiller

    student = _model("student", config, fused=case.get("fused", True))
    return compile_distiller(
        student,
        _inference_teacher(case, config),
        config,
        _optimizer(config),
        **_compile_options(case),
    )


def _keras_distill_case(case, config):
    """The reference: `keras.distillation.Distiller` with its own loss
    (`LogitsDistillation`, KL divergence at the config's T, student loss
    weight alpha), on stock Keras layers and an unfolded teacher."""
    import keras

    trainable = keras.distillation.Distiller(
        teacher=_model("teacher", config, fused=False),
        student=_model("student", config, fused=False),
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=config.temperature, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=config.alpha,
    )
    trainable.compile(
        optimizer=_optimizer(config),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **_compile_options(case),
    )
    return trainable


def _fit_runner(trainable, images, labels):
    """`run(steps)`, Keras `fit` of `trainable` on the one synthetic batch
    repeated, with `run.timed` for the timed repeats."""
    import keras
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensors((tf.constant(images), tf.constant(labels))).repeat()

    def run(steps):
        history = trainable.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        return {key: float(values[-1]) for key, values in history.history.items()}

    def timed(warmup, steps, repeats, batch_size):
        """Images/s of each repeat, timed between batch ends inside ONE
        `fit`: on this machine a `fit` call's wall time was sometimes padded
        to a multiple of ~2.55 s at its end (per-step times unaffected), so
        timing whole short `fit` calls measured that padding, not the step."""
        ends = []

        class StepClock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                ends.append((batch + 1, time.perf_counter()))

        history = trainable.fit(
            dataset,
            epochs=1,
            steps_per_epoch=warmup + steps * repeats,
            verbose=0,
            shuffle=False,
            callbacks=[StepClock()],
        )
        clock = dict(ends)  # Steps done -> time (one entry per execution).
        marks = [clock[warmup + r * steps] for r in range(repeats + 1)]
        rates = [steps * batch_size / (after - before) for before, after in zip(marks, marks[1:])]
        logs = {key: float(values[-1]) for key, values in history.history.items()}
        return rates, logs

    run.timed = timed
    return run


def run_worker(name, args):
    """Measures one case in this process; returns its result dict."""
    case = dict(CASES[name])
    if "auto" in (case.get("precision"), case.get("teacher_precision")):
        from kd_keras.hardware import resolve_precisions
        from kd_keras.train.speed import local_machine

        choice = resolve_precisions(
            case.get("precision", "float32"),
            case.get("teacher_precision", "float32"),
            local_machine(),
        )
        case.update(precision=choice.precision, teacher_precision=choice.teacher_precision)
        case["what"] += f" [resolved: {choice.describe()}]"
    spe = case.get("spe", 1)
    steps = _round_up(args.steps, spe)
    warmup = _round_up(args.warmup_steps, spe)
    threads = case.get("threads")
    if threads == "cores":
        threads = _usable_cores()
    result = {
        "case": name,
        "kind": case["kind"],
        "what": case["what"],
        "options": {
            "precision": case.get("precision", "float32"),
            # A torch case runs both models at its one precision.
            "teacher_precision": case.get(
                "teacher_precision",
                case.get("precision", "float32") if case["kind"] == "torch" else "float32",
            ),
            "steps_per_execution": spe,
            "jit_compile": case.get("jit", False),
            "threads": threads,
            "fused_batch_norm": case.get("fused", True),
            "fold_teacher_batch_norm": case.get("fold", True),
        },
        "batch_size": args.batch_size,
        "steps": steps,
        "repeats": args.repeats,
        "warmup_steps": warmup,
    }
    result["precision"] = case_precision(case["kind"], result["options"])
    start = time.perf_counter()
    if case["kind"] == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as error:
            return {**result, "status": "skipped", "error": f"torch is not installed ({error})"}
        from benchmarks import torch_resnet

        reason = torch_resnet.unavailable_reason(name)
        if reason:
            return {**result, "status": "skipped", "error": reason}

        images, labels = _synthetic_batch(args.batch_size)
        result["rss_after_import_mib"] = round(_rss_mib(), 1)
        run, info = torch_resnet.make_case(
            name,
            images,
            labels,
            teacher_depth=args.teacher_depth,
            student_depth=args.student_depth,
            teacher_width=args.teacher_width,
            student_width=args.student_width,
        )
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import kd_keras  # noqa: F401  (sets KERAS_BACKEND before Keras loads)
        from kd_keras.train.speed import apply_threading

        if case.get("gpu"):
            import tensorflow as tf

            if not tf.config.list_physical_devices("GPU"):
                reason = "needs a GPU (float16 is a GPU precision); TensorFlow sees none here"
                return {**result, "status": "skipped", "error": reason}
        if threads is not None and not apply_threading(threads):
            raise RuntimeError(f"could not set threads={threads}")
        images, labels = _synthetic_batch(args.batch_size)
        result["rss_after_import_mib"] = round(_rss_mib(), 1)
        run, info = _keras_setup(case, args, images, labels)
    result.update(info)
    setup_done = time.perf_counter()
    if warmup and not hasattr(run, "timed"):
        run(warmup)
    warm = time.perf_counter()
    rates = []
    last = None
    if hasattr(run, "timed"):  # Keras fit: timed inside one fit call.
        rates, last = run.timed(warmup, steps, args.repeats, args.batch_size)
        result["timing"] = "between batch ends inside one fit (warm-up steps first)"
    else:
        for _ in range(args.repeats):
            begin = time.perf_counter()
            last = run(steps)
            rates.append(steps * args.batch_size / (time.perf_counter() - begin))
    median = statistics.median(rates)
    result.update(
        status="ok",
        images_per_s=[round(r, 2) for r in rates],
        median_images_per_s=round(median, 2),
        min_images_per_s=round(min(rates), 2),
        max_images_per_s=round(max(rates), 2),
        step_ms=round(args.batch_size / median * 1000, 2),
        peak_rss_mib=round(_rss_mib(), 1),
        setup_s=round(setup_done - start, 2),
        warmup_s=round(warm - setup_done, 2),
        logs=last,
    )
    return result


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
        "cpu_count": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "torch": _version("torch"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _worker_argv(name, args, result_file):
    return [
        sys.executable,
        "-m",
        "benchmarks.throughput",
        "--worker",
        name,
        "--result-file",
        str(result_file),
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--warmup-steps",
        str(args.warmup_steps),
        "--batch-size",
        str(args.batch_size),
        "--teacher-depth",
        str(args.teacher_depth),
        "--student-depth",
        str(args.student_depth),
        "--teacher-width",
        str(args.teacher_width),
        "--student-width",
        str(args.student_width),
    ]


def run_case(name, args, out):
    """Runs one case in a fresh process; returns its result dict."""
    result_file = out / "cases" / f"{name}.json"
    log_file = out / "logs" / f"{name}.log"
    result_file.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    start = time.perf_counter()
    with open(log_file, "w") as log:
        try:
            code = subprocess.run(
                _worker_argv(name, args, result_file),
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=args.timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = round(time.perf_counter() - start, 1)
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


def merge_rounds(rounds):
    """One result per case from the results of several rounds: the repeats
    of every round pooled, median and min-max over all of them, the
    highest peak memory."""
    merged = dict(rounds[-1])
    ok = [r for r in rounds if r.get("status") == "ok"]
    if len(ok) != len(rounds):
        failed = next(r for r in rounds if r.get("status") != "ok")
        return {**failed, "rounds": len(rounds)}
    rates = [rate for r in ok for rate in r["images_per_s"]]
    median = statistics.median(rates)
    merged.update(
        rounds=len(rounds),
        images_per_s=rates,
        median_images_per_s=round(median, 2),
        min_images_per_s=round(min(rates), 2),
        max_images_per_s=round(max(rates), 2),
        step_ms=round(merged["batch_size"] / median * 1000, 2),
        peak_rss_mib=max(r["peak_rss_mib"] for r in ok),
        rss_after_import_mib=max(r.get("rss_after_import_mib", 0) for r in ok),
        wall_s=round(sum(r.get("wall_s", 0) for r in rounds), 1),
    )
    return merged


def _ratio(value, reference):
    if not value or not reference:
        return "–"
    return f"{value / reference:.2f}×"


def _result_precision(result):
    if "precision" in result:
        return result["precision"]
    case = CASES.get(result.get("case"), {})
    return case_precision(result.get("kind", case.get("kind")), result.get("options", case))


def report_groups(results):
    """The results split by precision, each group with its own references.

    Returns a list of dicts, one per precision present (float32, bfloat16,
    float16 first, then mixed labels, then the cases without a model):
    `precision`, `results` (in the given order), `torch` (the fastest ok
    PyTorch case at this precision, or None) and `keras` (the ok
    `keras.distillation` case at this precision, or None). A ratio is only
    ever taken inside one group, so no case is divided by a case of another
    precision.
    """
    groups = {}
    for result in results:
        label = _result_precision(result) or NO_MODEL
        groups.setdefault(label, []).append(result)
    order = [p for p in PRECISION_ORDER if p in groups]
    order += [p for p in groups if p not in PRECISION_ORDER and p != NO_MODEL]
    order += [NO_MODEL] if NO_MODEL in groups else []
    report = []
    for label in order:
        rows = groups[label]
        ok = [r for r in rows if r.get("status") == "ok"]
        torch_rows = [r for r in ok if r.get("kind") == "torch"]
        keras_rows = [r for r in ok if r.get("kind") == "keras_distill"]
        report.append(
            {
                "precision": label,
                "results": rows,
                "torch": max(torch_rows, key=lambda r: r["median_images_per_s"], default=None),
                "keras": keras_rows[0] if keras_rows else None,
            }
        )
    return report


def ratios(result, group):
    """`(vs best PyTorch, vs keras.distillation)` of one result of `group`
    (`report_groups`): floats, or None where either side is missing or the
    case is not a distillation step."""
    if result.get("status") != "ok" or result.get("kind") not in DISTILL_KINDS:
        return None, None
    value = result["median_images_per_s"]
    found = []
    for reference in (group["torch"], group["keras"]):
        found.append(value / reference["median_images_per_s"] if reference else None)
    return tuple(found)


def _cell(ratio):
    return "–" if ratio is None else f"{ratio:.2f}×"


def format_group(group):
    """One precision's Markdown table, with a line saying what its ratios compare."""
    label = group["precision"]
    header = ["case", "img/s (median)", "min–max", "step ms", "peak MiB", "+MiB over import"]
    with_ratios = label != NO_MODEL
    if with_ratios:
        header += [f"vs best PyTorch at {label}", f"vs keras.distillation at {label}"]
    header.append("what")
    lines = [f"### {label}", ""]
    if with_ratios:
        torch_ref, keras_ref = group["torch"], group["keras"]
        lines += [
            f"Ratios compare {label} cases only: best PyTorch at {label} = "
            + (f"`{torch_ref['case']}`" if torch_ref else "none measured")
            + f"; keras.distillation at {label} = "
            + (f"`{keras_ref['case']}`" if keras_ref else "none measured")
            + ".",
            "",
        ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in group["results"]:
        if r.get("status") != "ok":
            cells = [f"`{r['case']}`", r.get("status", "failed")] + [""] * (len(header) - 3)
            cells.append(r.get("error", "")[:200].replace("|", "/"))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [
            f"`{r['case']}`",
            f"{r['median_images_per_s']:.1f}",
            f"{r['min_images_per_s']:.1f}–{r['max_images_per_s']:.1f}",
            f"{r['step_ms']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['peak_rss_mib'] - r.get('rss_after_import_mib', 0):.0f}",
        ]
        if with_ratios:
            cells += [_cell(ratio) for ratio in ratios(r, group)]
        what = r["what"]
        kd = next(
            (x for x in group["results"] if x["case"] == KD_CASE and x.get("status") == "ok"),
            None,
        )
        if "method" in CASES.get(r["case"], {}) and kd:
            what += f" ({_cell(r['median_images_per_s'] / kd['median_images_per_s'])} {KD_CASE})"
        cells.append(what)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(results):
    """The Markdown tables of a list of case results: one per precision."""
    return "\n\n".join(format_group(group) for group in report_groups(results))


def write_report(out, machine, settings, results):
    """Writes results.json and results.md into `out`; returns the tables."""
    groups = report_groups(results)
    table = "\n\n".join(format_group(group) for group in groups)
    by_name = {r["case"]: r for r in results}
    document = {
        "machine": machine,
        "settings": settings,
        # Per precision: the cases its ratios divide by.
        "references": {
            g["precision"]: {
                "pytorch": g["torch"]["case"] if g["torch"] else None,
                "keras_distillation": g["keras"]["case"] if g["keras"] else None,
            }
            for g in groups
            if g["precision"] != NO_MODEL
        },
        "cases": by_name,
    }
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    flags = ", ".join(machine["cpu_flags"]) or "none of note"
    markdown = [
        "# Distillation step throughput",
        "",
        f"- Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores "
        f"(CPU flags: {flags}); precision 'auto' here: "
        f"{' / '.join(machine.get('auto_precision') or ('?', '?'))}",
        f"- TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, "
        f"PyTorch {machine['torch'] or 'not installed'}, Python {machine['python']}",
        f"- Date: {machine['date']}",
        f"- Teacher ResNet-{settings['teacher_depth']} (width {settings['teacher_width']}), "
        f"student ResNet-{settings['student_depth']} (width {settings['student_width']}), "
        f"batch {settings['batch_size']}; {settings['warmup_steps']} warm-up steps, then "
        f"{settings['repeats']} repeats of {settings['steps']} steps per case, each case "
        f"in its own process; {settings.get('rounds', 1)} interleaved round(s), repeats "
        "pooled.",
        "- One table per precision. Ratios compare median images/s of "
        "distillation steps of the same precision only (a bfloat16 step is "
        "never divided by a float32 one); cases whose student and teacher "
        "differ in precision have no like-for-like reference.",
        "",
        table,
        "",
    ]
    (out / "results.md").write_text("\n".join(markdown))
    return table


def main(argv=None):
    """Runs the benchmark; returns 0, or 1 if any case failed."""
    args = get_args(argv)
    if args.worker:
        result = run_worker(args.worker, args)
        Path(args.result_file).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    names = _case_names(args)
    out = Path(args.out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    settings = {
        key: getattr(args, key)
        for key in (
            "steps",
            "repeats",
            "rounds",
            "warmup_steps",
            "batch_size",
            "teacher_depth",
            "student_depth",
            "teacher_width",
            "student_width",
        )
    }
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
