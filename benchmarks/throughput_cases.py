"""The throughput benchmark's cases (`python -m benchmarks.throughput`):
what each one runs, and the precision it computes in."""

import os

# The Hinton KD step the --method cases are compared with (same precision).
KD_CASE = "kd_distiller"


def usable_cores():
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
# default True), pipeline (feed `fit` from kd_keras.make_dataset, as a run
# does, instead of one fixed batch). The models (seeded), the optimizer and the compile
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
    "student_train_pipeline": {
        "kind": "train",
        "model": "student",
        "pipeline": True,
        "what": "student_train fed by a run's input pipeline (kd_keras.make_dataset on "
        "10,000 random uint8 images: shuffle, pad-crop, flip) instead of one fixed batch",
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
    "kd_distiller_pipeline": {
        "kind": "distill",
        "pipeline": True,
        "what": "kd_distiller fed by a run's input pipeline (as student_train_pipeline)",
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
