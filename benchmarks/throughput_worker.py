"""The throughput benchmark's worker: one case, in its own process
(`python -m benchmarks.throughput --worker NAME`), timed on a synthetic batch."""

import os
import resource
import statistics
import time
from pathlib import Path

from benchmarks.throughput_cases import CASES, case_precision, usable_cores


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def _synthetic_batch(batch_size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batch_size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(batch_size,)).astype("int32")
    return images.astype("float32"), labels


def wait_at_barrier(folder, count, timeout=900.0):
    """Marks this process ready in `folder`, then waits until `count`
    processes are (so their timed steps start together)."""
    folder = Path(folder)
    (folder / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.glob("ready-*"))) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} processes did not reach the barrier in '{folder}'")
        time.sleep(0.01)


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
    if case.get("pipeline"):
        dataset, settings = _pipeline_dataset(args)
    else:
        dataset, settings = _fixed_batch_dataset(images, labels), {}
    return _fit_runner(makers[kind](case, config), dataset), settings


def _pipeline_dataset(args):
    """A run's training input pipeline (`kd_keras.make_dataset`: shuffled,
    padded, cropped and flipped batches) over 10,000 random uint8 images,
    the quick preset's training set size, repeated; and the settings to
    report."""
    import numpy as np

    import kd_keras

    rng = np.random.default_rng(1)
    count = 10000
    data = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    targets = rng.integers(0, 10, size=(count,)).astype("int32")
    dataset = kd_keras.make_dataset(
        data, targets, batch_size=args.batch_size, training=True, seed=0
    ).repeat()
    return dataset, {"dataset_images": count}


def _fixed_batch_dataset(images, labels):
    """The one synthetic batch, repeated: no input pipeline in the step."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensors((tf.constant(images), tf.constant(labels))).repeat()


def _input_case(args):
    """The `input` case: `kd_keras.make_dataset` alone, on random uint8 images."""
    dataset, settings = _pipeline_dataset(args)
    iterator = iter(dataset)

    def run(steps):
        for _ in range(steps):
            batch = next(iterator)
        return {"first_pixel": float(batch[0][0, 0, 0, 0])}

    return run, settings


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


def _fit_runner(trainable, dataset):
    """`run(steps)`, Keras `fit` of `trainable` on `dataset` (endless: the
    one synthetic batch repeated, or a run's input pipeline), with
    `run.timed` for the timed repeats."""
    import keras

    def run(steps):
        history = trainable.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        return {key: float(values[-1]) for key, values in history.history.items()}

    def timed(warmup, steps, repeats, batch_size, barrier=None):
        """Images/s of each repeat, timed between batch ends inside ONE
        `fit`: on this machine a `fit` call's wall time was sometimes padded
        to a multiple of ~2.55 s at its end (per-step times unaffected), so
        timing whole short `fit` calls measured that padding, not the step.
        `barrier()`, if given, runs after the warm-up steps, before the
        first timed one. Also returns the timed steps' window in wall-clock
        seconds (`time.time()`), to compare with other processes'."""
        ends = []
        window = []

        class StepClock(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch + 1 == warmup and barrier is not None:
                    barrier()
                ends.append((batch + 1, time.perf_counter()))
                if batch + 1 in (warmup, warmup + steps * repeats):
                    window.append(time.time())

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
        return rates, logs, window

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
        threads = usable_cores()
    if getattr(args, "worker_threads", None):
        threads = args.worker_threads
        case["what"] += f" [threads: {threads}, inter-op 1]"
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
        barrier = None
        if getattr(args, "barrier", None):
            count = args.barrier_count
            barrier = lambda: wait_at_barrier(args.barrier, count)  # noqa: E731
        rates, last, window = run.timed(
            warmup, steps, args.repeats, args.batch_size, barrier=barrier
        )
        result["timing"] = "between batch ends inside one fit (warm-up steps first)"
        result["timed_window"] = [round(t, 3) for t in window]
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
