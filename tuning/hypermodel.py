"""`SearchSpace` and `DistillationHyperModel`: what a distillation search tunes.

The hypermodel varies the two knobs of Hinton et al.'s loss, the
temperature T and the hard-label weight alpha, and, if the space says so,
the distillation method (`--methods`) and DKD's beta. Everything else
(student architecture, initial weights, optimizer, schedule, data order)
is held fixed, so that differences between trials come from those alone.
"""

import contextlib
import dataclasses
import math
import numbers
from typing import Optional

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kd_keras import RunConfig  # First: sets KERAS_BACKEND.
from kd_keras.distill.teacher import teacher_for_inference
from kd_keras.distill.teacher_cache import TeacherLogitCache, with_teacher_logits
from kd_keras.errors import NonFiniteLossError
from kd_keras.train import recipe
from kd_keras.train.callbacks import NonFiniteLossGuard
from kd_keras.validation import FEATURE_METHODS, METHODS, validate_temperature

DEFAULT_TEMPERATURE_RANGE = (1.0, 20.0)
DEFAULT_ALPHA_RANGE = (0.0, 1.0)


def _number(name, value):
    # bool is an int subclass; True as a temperature is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The ranges the search draws T and alpha from.

    T divides the logits, so its useful values span more than an order of
    magnitude; it is sampled on a log scale, which spends as many trials on
    [1, 4.5] as on [4.5, 20]. Alpha, a mixing weight, is sampled linearly.

    Args:
        temperature_min: lowest temperature, > 0.
        temperature_max: highest temperature, > `temperature_min`.
        alpha_min: lowest hard-label weight, in [0, 1].
        alpha_max: highest hard-label weight, in [0, 1], > `alpha_min`.
        alpha_step: if set, alpha only takes values
            `alpha_min + k * alpha_step` (a grid that Hyperband and Bayesian
            optimisation then never re-try); `None` samples continuously.
        temperature_step: if set, a factor > 1: T only takes values
            `temperature_min * temperature_step**k`; `None` samples
            continuously.
        fixed_temperature: if set, T is not tuned but held at this value
            (the range is then ignored).
        fixed_alpha: if set, alpha is not tuned but held at this value.
        methods: if set, the distillation methods (`--method` names) a
            trial chooses from, e.g. `("hinton", "dkd")`; `None` keeps the
            config's method. Each method's other hyperparameters are the
            config's.
        dkd_beta_range: if set, `(min, max)`: DKD's non-target weight beta
            is searched on a log scale in trials whose method is "dkd"
            (the config's method must be "dkd", or `methods` hold it).

    Raises:
        ValueError: for an empty range (min >= max), a temperature <= 0, an
            alpha outside [0, 1], a step that does not fit the range, or a
            non-number; the message names the bad value.

    Example:

    >>> space = SearchSpace(temperature_min=2, temperature_max=10,
    ...                     alpha_step=0.1)
    >>> space = SearchSpace(fixed_temperature=4.0)  # Tune alpha only.
    >>> space = SearchSpace(methods=("hinton", "dkd"), dkd_beta_range=(1, 16))
    """

    temperature_min: float = DEFAULT_TEMPERATURE_RANGE[0]
    temperature_max: float = DEFAULT_TEMPERATURE_RANGE[1]
    alpha_min: float = DEFAULT_ALPHA_RANGE[0]
    alpha_max: float = DEFAULT_ALPHA_RANGE[1]
    alpha_step: Optional[float] = None
    temperature_step: Optional[float] = None
    fixed_temperature: Optional[float] = None
    fixed_alpha: Optional[float] = None
    methods: Optional[tuple] = None
    dkd_beta_range: Optional[tuple] = None

    def __post_init__(self):
        # Lists (from JSON or a caller) are held as tuples: the space is frozen.
        for name in ("methods", "dkd_beta_range"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self):
        """Checks every field; returns self or raises `ValueError`."""
        if self.fixed_temperature is not None:
            value = _number("fixed_temperature", self.fixed_temperature)
            if value <= 0:
                raise ValueError(f"fixed_temperature must be > 0, got {value:g}")
            validate_temperature(value)
        else:
            low = _number("temperature_min", self.temperature_min)
            high = _number("temperature_max", self.temperature_max)
            if low <= 0:
                raise ValueError(
                    f"temperature_min must be > 0 (T is sampled on a log scale), got {low:g}"
                )
            if low >= high:
                raise ValueError(
                    f"temperature range [{low:g}, {high:g}] is empty: the minimum must "
                    "be below the maximum (use a fixed temperature to hold T constant)"
                )
            validate_temperature(low)  # Every trial's T must pass the Distiller's range.
            validate_temperature(high)
            if self.temperature_step is not None:
                step = _number("temperature_step", self.temperature_step)
                if step <= 1:
                    raise ValueError(
                        f"temperature_step is a factor between samples and must be > 1, "
                        f"got {step:g}"
                    )
                if low * step > high * (1 + 1e-9):
                    raise ValueError(
                        f"temperature_step {step:g} leaves only one value in "
                        f"[{low:g}, {high:g}]: use a smaller factor or a fixed temperature"
                    )
        if self.fixed_alpha is not None:
            value = _number("fixed_alpha", self.fixed_alpha)
            if not 0 <= value <= 1:
                raise ValueError(f"fixed_alpha must be in [0, 1], got {value:g}")
        else:
            low = _number("alpha_min", self.alpha_min)
            high = _number("alpha_max", self.alpha_max)
            for name, value in (("alpha_min", low), ("alpha_max", high)):
                if not 0 <= value <= 1:
                    raise ValueError(
                        f"{name} must be in [0, 1] (alpha weights the hard-label "
                        f"loss), got {value:g}"
                    )
            if low >= high:
                raise ValueError(
                    f"alpha range [{low:g}, {high:g}] is empty: the minimum must be "
                    "below the maximum (use a fixed alpha to hold it constant)"
                )
            if self.alpha_step is not None:
                step = _number("alpha_step", self.alpha_step)
                if not 0 < step <= high - low:
                    raise ValueError(
                        f"alpha_step must be in (0, {high - low:g}] for the range "
                        f"[{low:g}, {high:g}], got {step:g}"
                    )
        self._validate_methods()
        return self

    def _validate_methods(self):
        if self.methods is not None:
            methods = self.methods
            if (
                not isinstance(methods, tuple)
                or not methods
                or not all(isinstance(m, str) for m in methods)
            ):
                raise ValueError(
                    f"methods must be a non-empty list of method names, got {methods!r}"
                )
            unknown = [m for m in methods if m not in METHODS]
            if unknown:
                raise ValueError(
                    f"unknown method {unknown[0]!r} in methods; choose from {', '.join(METHODS)}"
                )
            if len(set(methods)) != len(methods):
                raise ValueError(f"methods lists a method twice: {list(methods)!r}")
        if self.dkd_beta_range is not None:
            if not isinstance(self.dkd_beta_range, tuple) or len(self.dkd_beta_range) != 2:
                raise ValueError(f"dkd_beta_range must be (min, max), got {self.dkd_beta_range!r}")
            low = _number("dkd_beta_range min", self.dkd_beta_range[0])
            high = _number("dkd_beta_range max", self.dkd_beta_range[1])
            if low <= 0 or low >= high:
                raise ValueError(
                    f"dkd_beta_range [{low:g}, {high:g}] must have 0 < min < max "
                    "(beta is sampled on a log scale)"
                )
            if self.methods is not None and "dkd" not in self.methods:
                raise ValueError(
                    f"dkd_beta_range needs dkd among the methods, got {list(self.methods)!r}"
                )

    def to_dict(self):
        values = dataclasses.asdict(self)
        for name in ("methods", "dkd_beta_range"):
            if values[name] is not None:
                values[name] = list(values[name])  # As JSON holds it.
        return values

    def check_config(self, config):
        """Raises `ValueError` if a trial of this space could not run with
        `config` (a `RunConfig`): DKD's beta searched while the method is
        fixed to another one, or a method the config's other settings
        refuse (e.g. logit standardization with fitnets)."""
        if self.dkd_beta_range is not None and self.methods is None and config.method != "dkd":
            raise ValueError(
                f"dkd_beta_range searches DKD's beta, but the method is {config.method!r}; "
                "add --method dkd, or dkd to the searched methods"
            )
        for method in self.methods or ():
            try:
                dataclasses.replace(config, method=method).validate()
            except ValueError as error:
                raise ValueError(f"method {method!r} cannot be searched here: {error}") from None
        return self

    def contains(self, temperature, alpha, tolerance=1e-6):
        """True if (T, alpha) is a value this space can produce."""
        if self.fixed_temperature is not None:
            t_ok = abs(temperature - self.fixed_temperature) <= tolerance
        else:
            t_ok = (
                self.temperature_min * (1 - tolerance)
                <= temperature
                <= self.temperature_max * (1 + tolerance)
            )
        if self.fixed_alpha is not None:
            a_ok = abs(alpha - self.fixed_alpha) <= tolerance
        else:
            a_ok = self.alpha_min - tolerance <= alpha <= self.alpha_max + tolerance
        return t_ok and a_ok

    def default_values(self, temperature, alpha, method="hinton"):
        """The hyperparameter values of the default T and alpha (a fixed knob
        keeps its value), or `None` if they lie outside this space. With
        searched `methods`, the default is `method` (Hinton KD), or the
        first method if that is not among them."""
        values = {
            "temperature": float(
                temperature if self.fixed_temperature is None else self.fixed_temperature
            ),
            "alpha": float(alpha if self.fixed_alpha is None else self.fixed_alpha),
        }
        if not self.contains(values["temperature"], values["alpha"], 0):
            return None
        if self.methods is not None:
            values["method"] = method if method in self.methods else self.methods[0]
        return values

    def declare_trial(self, hp, config):
        """Declares every searched hyperparameter on `hp`.

        Returns:
            `(temperature, alpha, changes)`: the trial's T and alpha, and
            the `RunConfig` fields it changes (`method`, `dkd_beta`).
        """
        temperature, alpha = self.declare(hp)
        changes = {}
        method = config.method
        if self.methods is not None:
            if len(self.methods) == 1:
                method = hp.Fixed("method", self.methods[0])
            else:
                method = hp.Choice("method", list(self.methods))
            changes["method"] = method
        if self.dkd_beta_range is not None:
            chooses = self.methods is not None and len(self.methods) > 1
            scope = hp.conditional_scope("method", ["dkd"]) if chooses else contextlib.nullcontext()
            with scope:
                beta = hp.Float(
                    "dkd_beta",
                    min_value=float(self.dkd_beta_range[0]),
                    max_value=float(self.dkd_beta_range[1]),
                    sampling="log",
                )
            if method == "dkd":
                changes["dkd_beta"] = float(beta)
        return temperature, alpha, changes

    def declare(self, hp):
        """Declares `temperature` and `alpha` on a `keras_tuner.HyperParameters`.

        Returns:
            `(temperature, alpha)`, the values of this trial.
        """
        if self.fixed_temperature is not None:
            temperature = hp.Fixed("temperature", float(self.fixed_temperature))
        else:
            temperature = hp.Float(
                "temperature",
                min_value=float(self.temperature_min),
                max_value=float(self.temperature_max),
                step=self.temperature_step,
                sampling="log",
            )
        if self.fixed_alpha is not None:
            alpha = hp.Fixed("alpha", float(self.fixed_alpha))
        else:
            alpha = hp.Float(
                "alpha",
                min_value=float(self.alpha_min),
                max_value=float(self.alpha_max),
                step=self.alpha_step,
            )
        return float(temperature), float(alpha)


class DistillationHyperModel(keras_tuner.HyperModel):
    """Builds a `kd_keras.Distiller` per trial, tuning T and alpha (and the
    space's methods and DKD beta).

    Every trial starts from the same student: the student is built once,
    seeded as `kd_keras`'s pipeline seeds its students (`config.seed + 1`),
    and its initial weights are copied into each trial's fresh student. The
    optimizer, schedule and compile arguments are the pipeline's
    (`kd_keras.train.recipe`), and `fit` makes each trial's
    training data afresh from a seeded, per-epoch pipeline, so all trials
    see the same data order and augmentation: two trials differ only in T
    and alpha.

    Args:
        teacher: the trained teacher, a logits `keras.Model` (it is frozen
            by the `Distiller` and shared by all trials).
        steps_per_epoch: training batches per epoch (sizes the schedule).
        epochs: epochs the learning-rate schedule spans; defaults to
            `config.student_epochs`. For Hyperband, the most epochs one
            trial may train.
        config: a `kd_keras.RunConfig` giving the student
            (`student_depth`, `student_width`), the recipe (`learning_rate`,
            `momentum`, `weight_decay`, `warmup_epochs`) and `seed`;
            defaults to `RunConfig()`.
        space: a `SearchSpace`; defaults to T in [1, 20] (log scale) and
            alpha in [0, 1].
        trial_seeds: score each trial as the mean of this many students
            of different initial weights (seeds `config.seed` to
            `config.seed + trial_seeds - 1`; same data order), trained one
            after another (keras-tuner's `executions_per_trial`).
        cache_teacher_logits: if True (default) and the training data is
            given as a callable `train_data(epochs, start_epoch)` (see
            `fit`), the teacher's logits of each epoch's batches are
            computed by the first trial that trains that epoch and replayed
            by every later one (`kd_keras.TeacherLogitCache`): the trials see
            the same batches, so the logits are the same, and the later
            trials skip the teacher's forward pass. Likewise for a
            `tf.data` validation set. False runs the teacher in every step.
        cache_folder: with `cache_teacher_logits`, also keep each epoch's
            teacher logits in this folder, where every hypermodel on the
            same folder reads them (the workers of a search on one
            machine; a resumed search): `TeacherLogitCache(folder=)`.
        name: the hypermodel's name.

    Raises:
        ValueError: for an invalid search space, or `steps_per_epoch` or
            `epochs` below 1; the message names the bad value.

    Example:

    >>> hypermodel = DistillationHyperModel(
    ...     teacher, steps_per_epoch=79, epochs=5, config=config,
    ...     space=SearchSpace(temperature_min=2, temperature_max=10))
    >>> tuner = keras_tuner.RandomSearch(
    ...     hypermodel, objective=keras_tuner.Objective("val_accuracy", "max"),
    ...     max_trials=10, directory="searches", project_name="kd")
    >>> def train_data(epochs, start_epoch):
    ...     return make_dataset(x, y, batch_size=128, training=True,
    ...                         seed=config.seed, epochs=epochs,
    ...                         start_epoch=start_epoch)
    >>> tuner.search(train_data, validation_data=val_ds, epochs=5)
    """

    def __init__(
        self,
        teacher,
        *,
        steps_per_epoch,
        epochs=None,
        config=None,
        space=None,
        cache_teacher_logits=True,
        trial_seeds=1,
        cache_folder=None,
        name="kd_distillation",
    ):
        super().__init__(name=name, tunable=True)
        if not isinstance(teacher, keras.Model):
            raise ValueError(f"teacher must be a keras.Model, got {type(teacher).__name__}")
        self.config = (config or RunConfig()).validate()
        self.space = (space or SearchSpace()).validate()
        try:
            self.space.check_config(self.config)
        except ValueError as error:
            raise ValueError(str(error)) from None
        self.epochs = self.config.student_epochs if epochs is None else epochs
        for label, value in (("steps_per_epoch", steps_per_epoch), ("epochs", self.epochs)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{label} must be an int >= 1, got {value!r}")
        if isinstance(trial_seeds, bool) or not isinstance(trial_seeds, int) or trial_seeds < 1:
            raise ValueError(f"trial_seeds must be an int >= 1, got {trial_seeds!r}")
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(self.epochs)
        # The teacher as kd_keras's pipeline runs it while distilling:
        # batch norm folded, in the config's teacher precision.
        self.teacher = teacher_for_inference(teacher, self.config.teacher_precision)
        self.cache_teacher_logits = bool(cache_teacher_logits)
        self.cache_folder = cache_folder
        self._train_caches = {}  # id(train_data) -> (train_data, TeacherLogitCache)
        self._val_caches = {}  # id(dataset) -> (dataset, dataset with logits)
        self.trial_seeds = trial_seeds
        self._executions = {}  # id(hp) -> (hp, builds so far)
        # Built once per seed: every trial copies these weights, so no trial
        # gets a luckier initialisation than another. Seed i is the
        # student of config.seed + i (seed 0: the pipeline's student).
        self.seed_weights = [self._new_student(seed).get_weights() for seed in range(trial_seeds)]
        self.initial_weights = self.seed_weights[0]

    def _new_student(self, seed=0):
        # The pipeline's student (`recipe.build_student`, seeded with
        # seed + 1): a search and a run with the same seed, depth and width
        # start from one student. It takes the teacher's images and predicts
        # its classes; a search trains on one device, so its batch norm is
        # never synchronized.
        return recipe.build_student(
            dataclasses.replace(self.config, seed=self.config.seed + seed) if seed else self.config,
            input_shape=tuple(self.teacher.inputs[0].shape[1:]),
            num_classes=int(self.teacher.outputs[0].shape[-1]),
            synchronized_batch_norm=False,
        )

    def build(self, hp):
        """A compiled `Distiller` of a fresh student and the shared teacher.

        Args:
            hp: the trial's `keras_tuner.HyperParameters`.

        Returns:
            A `kd_keras.Distiller` compiled with the trial's T and alpha.
        """
        temperature, alpha, changes = self.space.declare_trial(hp, self.config)
        # With trial_seeds k, keras-tuner builds each trial k times (its
        # executions_per_trial) and averages their scores: execution i
        # starts from seed i's student.
        _, builds = self._executions.get(id(hp), (hp, 0))
        self._executions[id(hp)] = (hp, builds + 1)
        student = self._new_student()
        student.set_weights(self.seed_weights[builds % self.trial_seeds])
        distiller = recipe.compile_distiller(
            student,
            self.teacher,
            dataclasses.replace(self.config, **changes) if changes else self.config,
            recipe.make_optimizer(self.config, self.steps_per_epoch, self.epochs),
            temperature=temperature,
            alpha=alpha,
        )
        # keras-tuner checkpoints each trial with `save_weights` (and
        # Hyperband reloads with `load_weights`), which refuse an unbuilt
        # model; the Distiller is only built when first called. Its two
        # models are built already, so one tiny forward pass builds it.
        distiller(keras.ops.zeros((1,) + tuple(student.inputs[0].shape[1:])))
        # Built now, the optimizer's state (momentum, step count) is part of
        # the checkpoint that Hyperband loads to continue a trial; otherwise
        # Keras skips it with a warning and the continuation starts cold.
        distiller.optimizer.build(student.trainable_variables)
        return distiller

    def _training_data(self, train_data, epochs, initial_epoch, cache=True):
        if not cache:
            return train_data(epochs, initial_epoch)
        return self._teacher_cache(train_data).dataset(epochs, initial_epoch)

    def _teacher_cache(self, train_data):
        key = id(train_data)
        if key not in self._train_caches:
            cache = TeacherLogitCache(
                self.teacher,
                train_data,
                steps_per_epoch=self.steps_per_epoch,
                folder=self.cache_folder,
            )
            # Holding train_data keeps its id from being reused.
            self._train_caches[key] = (train_data, cache)
        return self._train_caches[key][1]

    @property
    def caches_teacher_logits(self):
        """Whether some trial replays cached teacher logits: caching is on
        and a searched method distils from logits alone (FitNets and AT
        read the teacher's layers: their trials run the teacher live)."""
        methods = self.space.methods or (self.config.method,)
        return self.cache_teacher_logits and any(m not in FEATURE_METHODS for m in methods)

    def fill_teacher_cache(self, train_data, epochs=None):
        """Computes the teacher's logits of epochs `0 .. epochs - 1`
        (default: `self.epochs`) of `train_data` now, into `cache_folder`
        if given, so trials (and workers reading the folder) replay them.
        Does nothing when no trial would replay them."""
        if self.caches_teacher_logits:
            # Seeded as `fit` seeds before it makes a trial's batches: the
            # pipeline's views depend on TensorFlow's global seed too, and
            # logits of other views would not be replayed but computed again.
            recipe.seed_training(self.config)
            self._teacher_cache(train_data).fill(self.epochs if epochs is None else epochs)

    def _validation_data(self, dataset):
        key = id(dataset)
        if key not in self._val_caches:
            self._val_caches[key] = (dataset, with_teacher_logits(dataset, self.teacher))
        return self._val_caches[key][1]

    def fit(self, hp, model, *args, **kwargs):
        """Trains one trial's distiller; returns its `History`.

        Args:
            hp: the trial's `keras_tuner.HyperParameters`.
            model: the `Distiller` that `build` returned.
            *args: passed to `model.fit`. The training data (first
                positional argument or `x=`) may be a callable
                `train_data(epochs, start_epoch)` returning a `tf.data`
                pipeline of the batches of epochs `start_epoch .. epochs - 1`
                (as `kd_keras.make_dataset(..., epochs=, start_epoch=)`
                makes); it is then called for every trial, `steps_per_epoch`
                is passed to `model.fit`, and every trial, and every
                Hyperband continuation, sees the same batches in each epoch
                as kd_keras's pipeline would.
            **kwargs: passed to `model.fit`, including the tuner's
                `callbacks` (they record the trial's metrics and
                checkpoint), `epochs` and, for Hyperband, `initial_epoch`.

        Returns:
            The `keras.callbacks.History` of `model.fit`.

        Raises:
            keras_tuner.errors.FailedTrialError: the loss became NaN or
                infinite (the message says where and what to lower); the
                tuner marks the trial FAILED.
        """
        # Same seed for every trial (the seed of anything drawn in fit).
        recipe.seed_training(self.config)
        epochs = int(kwargs.get("epochs", 1))
        initial_epoch = int(kwargs.get("initial_epoch") or 0)
        made = False
        # A feature method (FitNets, AT) reads the teacher's layers: its
        # trials run the teacher on every batch, whatever the cache holds.
        cache = self.cache_teacher_logits and not model.needs_live_teacher
        if args and callable(args[0]):
            args = (self._training_data(args[0], epochs, initial_epoch, cache),) + tuple(args[1:])
            made = True
        elif callable(kwargs.get("x")):
            kwargs["x"] = self._training_data(kwargs["x"], epochs, initial_epoch, cache)
            made = True
        if cache and isinstance(kwargs.get("validation_data"), tf.data.Dataset):
            kwargs["validation_data"] = self._validation_data(kwargs["validation_data"])
        if made:
            # The pipeline holds the epochs back to back.
            kwargs.setdefault("steps_per_epoch", self.steps_per_epoch)
            # It shuffles itself; Keras would only warn that it ignores
            # its own shuffle=True for a dataset.
            kwargs.setdefault("shuffle", False)
        if initial_epoch:
            # Hyperband continues a trial from its best-epoch checkpoint at
            # `initial_epoch`: put the learning-rate schedule there too.
            model.optimizer.iterations.assign(initial_epoch * self.steps_per_epoch)
        # A diverging loss fails the trial (keras-tuner's FAILED, with the
        # run's hint) instead of completing it at chance.
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [
            NonFiniteLossGuard("search trial")
        ]
        try:
            return model.fit(*args, **kwargs)
        except NonFiniteLossError as error:
            raise keras_tuner.errors.FailedTrialError(str(error)) from None
