"""The training recipe: seeding, models, optimizer and compile arguments.

Every place that trains or times a kd_keras model takes them from here: the
pipeline's three stages (`kd_keras.train.pipeline`), the T/alpha search
(`tuning.hypermodel`), the run-time estimate (`kd_keras.train.speed`) and
the throughput benchmark (`benchmarks.throughput`). So "the same student,
the same optimizer, the same losses" across them is one piece of code:

* Seeds. `build_teacher` seeds with `config.seed`, `build_student` with
  `config.seed + 1`, and `seed_training` re-seeds with `config.seed` right
  before each `fit`. A student built for a search is therefore the very
  student of a run with the same seed, depth and width.
* Models. `config.teacher_model` / `config.student_model` (or
  `resnet<depth>` of the config's depth and width when unset), built with
  `kd_keras.models.zoo.build_model` under the config's precision.
* Optimizer. `make_optimizer`: SGD with Nesterov momentum, decoupled weight
  decay (not on batch-norm parameters or biases), a linear warm-up then
  cosine decay; wrapped in a `LossScaleOptimizer` under "mixed_float16".
* Losses. `compile_classifier`: cross-entropy on logits and an "accuracy"
  metric; `compile_distiller`: a `Distiller` with the config's (or given)
  temperature and alpha and an "accuracy" metric.

Example:

>>> config = RunConfig.from_preset("smoke")
>>> student = build_student(config)  # Seeded with config.seed + 1.
>>> teacher = build_teacher(config)  # Seeded with config.seed.
>>> distiller = compile_distiller(
...     student, teacher, config, make_optimizer(config, 10, config.student_epochs))
>>> seed_training(config)
>>> distiller.fit(images, labels, batch_size=config.batch_size, epochs=4)
"""

import numbers

import keras

from kd_keras.config import RunConfig
from kd_keras.data.cifar10 import IMAGE_SHAPE, NUM_CLASSES
from kd_keras.distill.distiller import Distiller
from kd_keras.distill.losses.methods import method_losses
from kd_keras.distill.losses.multi_teacher import MultiTeacherKD
from kd_keras.distill.teacher import resolve_teacher_outputs
from kd_keras.models.zoo import build_model
from kd_keras.train.speed import precision_scope

# Added to `config.seed` before building each model (see the module docstring).
TEACHER_SEED_OFFSET = 0
STUDENT_SEED_OFFSET = 1

# Variables that get no decoupled weight decay (matched by name).
NO_WEIGHT_DECAY = ("gamma", "beta", "bias")


def _check_config(config):
    if not isinstance(config, RunConfig):
        raise TypeError(
            f"config must be a kd_keras RunConfig, got {type(config).__name__} "
            f"({config!r}); make one with RunConfig(...) or RunConfig.from_preset(...)"
        )
    return config


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def seed_everything(seed):
    """Seeds Python's, NumPy's, TensorFlow's and Keras's random generators.

    `keras.utils.set_random_seed`: the weights a model is built with and
    anything `fit` draws (dropout, a Keras-side shuffle) follow from `seed`.

    Args:
        seed: an int >= 0.

    Raises:
        ValueError: `seed` is not an int >= 0.
    """
    keras.utils.set_random_seed(_check_count("seed", seed))


def seed_training(config):
    """Seeds with `config.seed` right before a stage's `fit`, as every
    stage, search trial and continuation does."""
    seed_everything(_check_config(config).seed)


def _build(config, role, *, input_shape, num_classes, precision, seed_offset, options):
    seed_everything(config.seed + seed_offset)
    spec, depth, width = (
        getattr(config, f"{role}_model"),
        getattr(config, f"{role}_depth"),
        getattr(config, f"{role}_width"),
    )
    options.setdefault("synchronized_batch_norm", config.sync_batch_norm)
    with precision_scope(config.precision if precision is None else precision):
        return build_model(
            spec,
            role=role,
            depth=depth,
            width=width,
            input_shape=input_shape,
            num_classes=num_classes,
            **options,
        )


def build_teacher(
    config, *, input_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, precision=None, **resnet_options
):
    """A new, untrained teacher of `config`, seeded with `config.seed`.

    `config.teacher_model` (or `resnet<teacher_depth>` of `teacher_width`
    when unset), built by `kd_keras.models.zoo.build_model` under
    `precision_scope(config.precision)`. `config.teacher` (a trained file
    to reuse) is not looked at: load that with `load_teacher`.

    Args:
        config: a `RunConfig` with a resolved precision (not "auto").
        input_shape: `(height, width, 3)` of the images (default CIFAR's).
        num_classes: the number of classes (default 10).
        precision: a dtype policy that overrides `config.precision`.
        **resnet_options: more keywords of `build_resnet`, for ResNets only
            (`synchronized_batch_norm` defaults to `config.sync_batch_norm`;
            e.g. `fused_batch_norm=False` for stock batch norm).

    Returns:
        A functional `keras.Model` from raw 0..255 pixels to logits.

    Raises:
        TypeError: `config` is not a `RunConfig`.
        ValueError: the precision is "auto" (resolve it first with
            `resolve_run_precisions`).
        ModelSpecError: the model spec cannot be built.
    """
    return _build(
        _check_config(config),
        "teacher",
        input_shape=input_shape,
        num_classes=num_classes,
        precision=precision,
        seed_offset=TEACHER_SEED_OFFSET,
        options=dict(resnet_options),
    )


def build_student(
    config, *, input_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, precision=None, **resnet_options
):
    """A new student of `config`, seeded with `config.seed + 1`.

    Two calls with the same config return students with the same initial
    weights: the baseline and the distilled student of a run, and every
    trial of a search, start from these. Arguments, result and errors as
    `build_teacher`, with `config.student_model`, `student_depth` and
    `student_width`.
    """
    return _build(
        _check_config(config),
        "student",
        input_shape=input_shape,
        num_classes=num_classes,
        precision=precision,
        seed_offset=STUDENT_SEED_OFFSET,
        options=dict(resnet_options),
    )


def make_optimizer(config, steps_per_epoch, epochs):
    """SGD with Nesterov momentum, decoupled weight decay (not on batch-norm
    parameters or biases) and a linear warm-up followed by cosine decay.

    The learning rate rises linearly from `config.learning_rate / 10` to
    `config.learning_rate` over `config.warmup_epochs` epochs (at most all
    but the last step), then follows a cosine down to 0 at the last step.
    Without warm-up it is a cosine from `config.learning_rate`. Under
    "mixed_float16" the optimizer is wrapped in a
    `keras.optimizers.LossScaleOptimizer`.

    Args:
        config: a `RunConfig` (`learning_rate`, `momentum`, `weight_decay`,
            `warmup_epochs`, `precision`).
        steps_per_epoch: training steps per epoch, an int >= 0.
        epochs: the epochs the schedule spans, an int >= 0.

    Returns:
        A new `keras.optimizers.Optimizer`.

    Raises:
        TypeError: `config` is not a `RunConfig`.
        ValueError: `steps_per_epoch` or `epochs` is not an int >= 0.
    """
    config = _check_config(config)
    steps_per_epoch = _check_count("steps_per_epoch", steps_per_epoch)
    epochs = _check_count("epochs", epochs)
    total_steps = max(1, steps_per_epoch * epochs)
    warmup_steps = min(steps_per_epoch * config.warmup_epochs, total_steps - 1)
    if warmup_steps > 0:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate / 10,
            decay_steps=total_steps - warmup_steps,
            warmup_target=config.learning_rate,
            warmup_steps=warmup_steps,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate, decay_steps=total_steps
        )
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay or None,
    )
    optimizer.exclude_from_weight_decay(var_names=list(NO_WEIGHT_DECAY))
    if config.precision == "mixed_float16":
        # float16 gradients underflow without loss scaling. Keras wraps the
        # optimizer of a mixed_float16 model itself; a Distiller keeps the
        # float32 policy, so wrap here for every stage alike.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _check_compile_options(function, options, reserved):
    given = sorted(set(options) & set(reserved))
    if given:
        raise ValueError(
            f"{function} sets {', '.join(reserved)} itself; got "
            + ", ".join(f"{key}={options[key]!r}" for key in given)
            + " (compile the model yourself for another loss or metrics)"
        )


def compile_classifier(model, optimizer, **compile_options):
    """Compiles a logits model with the recipe's loss and metric.

    Loss `SparseCategoricalCrossentropy(from_logits=True)`, metric
    `SparseCategoricalAccuracy(name="accuracy")`.

    Args:
        model: a `keras.Model` returning logits.
        optimizer: its optimizer (`make_optimizer`), or `None` for a model
            that is only evaluated.
        **compile_options: more keywords of `keras.Model.compile` (e.g.
            `steps_per_execution`, `jit_compile`).

    Returns:
        `model`, compiled.

    Raises:
        ValueError: `compile_options` holds `loss` or `metrics`.
    """
    _check_compile_options("compile_classifier", compile_options, ("loss", "metrics"))
    if optimizer is not None:
        compile_options["optimizer"] = optimizer
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        **compile_options,
    )
    return model


def compile_distiller(
    student,
    teacher,
    config,
    optimizer,
    *,
    temperature=None,
    alpha=None,
    other_teachers=None,
    **compile_options,
):
    """A compiled `Distiller` of `student` and `teacher`.

    The teacher is used as given: pass the frozen teacher as it should run
    while distilling (`teacher_for_inference`: batch norm folded, in the
    teacher precision). The Distiller's metric is "accuracy" of the
    student's logits against the hard labels.

    Args:
        student: the student `keras.Model` (logits).
        teacher: the teacher `keras.Model` (logits, or a softmax's
            probabilities: `config.teacher_outputs`, "auto" detects it).
        config: a `RunConfig`; its `temperature`, `alpha` and
            `teacher_outputs` are used unless given here, and its `method`
            picks the losses.
        optimizer: the student's optimizer (`make_optimizer`).
        temperature: T, overriding `config.temperature` (a search trial's).
        alpha: the hard-label weight, overriding `config.alpha`.
        other_teachers: more trained teachers (logits `keras.Model`s, as
            `teacher` runs): the student distils from all of them with
            `MultiTeacherKD` in `config.teachers_mode` (Hinton KD's loss,
            at T); `None` or empty: `config.method`'s losses.
        **compile_options: more keywords of `keras.Model.compile` (e.g.
            `steps_per_execution`, `jit_compile`).

    Returns:
        The compiled `kd_keras.Distiller`.

    Raises:
        TypeError: `config` is not a `RunConfig`.
        ValueError: T or alpha out of range (see `Distiller.compile`), or
            `compile_options` holds `metrics`, `temperature` or `alpha`
            (pass T and alpha as the keywords above).
    """
    config = _check_config(config)
    _check_compile_options("compile_distiller", compile_options, ("metrics",))
    # "auto" (a Python caller's config) is detected here; a run's is resolved.
    outputs = resolve_teacher_outputs(teacher, config.teacher_outputs)
    # config.method's losses; None: the default Hinton loss with T.
    losses, weights = method_losses(config, temperature)
    if other_teachers:
        losses = [
            MultiTeacherKD(
                list(other_teachers),
                mode=config.teachers_mode,
                temperature=config.temperature if temperature is None else temperature,
            )
        ]
        weights = [1.0]
    distiller = Distiller(
        student=student,
        teacher=teacher,
        teacher_outputs=outputs,
        distillation_losses=losses,
        distillation_loss_weights=weights,
    )
    if losses is None:
        compile_options["temperature"] = config.temperature if temperature is None else temperature
    distiller.compile(
        optimizer=optimizer,
        metrics=["accuracy"],
        alpha=config.alpha if alpha is None else alpha,
        **compile_options,
    )
    return distiller
