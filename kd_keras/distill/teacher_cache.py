"""`TeacherLogitCache`: a frozen teacher's logits, computed once, replayed.

The teacher's soft targets are only valid for the exact augmented view the
student trains on, so caching them pays only where the same views come
back. That is the case for kd_keras's data pipeline across *runs that share
a seed*: `make_dataset(..., seed=s, epochs=E)` yields the same batches, in
the same order and with the same crops and flips, every time it is made
(epoch `e` depends on `(s, e)` alone). A Keras-Tuner search trains every
trial on exactly those batches with the same teacher, so trial 2 onwards
can replay trial 1's teacher logits instead of running the teacher again.
Within one run there is nothing to reuse (every epoch has new views), so the
three-stage pipeline does not cache.

Memory: 10 float32 logits per training image per epoch (400 KB per epoch of
the quick preset's 10,000 images).

Given a `folder`, each epoch's logits are also kept there
(`epoch_<e>.npz`, written atomically) and read back by any cache on the
same folder: the workers of a distributed search on one machine share one
teacher pass per epoch (the chief fills it before they start, `fill`), and
a resumed search does not run the teacher again. A file whose first batch
no longer matches the teacher's fresh logits (another teacher, seed or
data) is computed again and replaced.

The views must really be the same: `make_dataset`'s shuffle and crop seeds
are combined with TensorFlow's global seed, so a pipeline made after another
`keras.utils.set_random_seed` yields other views. `dataset()` therefore
checks the first batch of every epoch it replays against a fresh teacher
pass and raises `CacheMismatchError` if they differ.

Batch layout: the logits ride in `x`, as `({"images": x, "teacher_logits":
logits}, y)` (or `(..., y, sample_weight)` when the batches carry sample
weights), which `kd_keras.Distiller` takes instead of running the teacher.
The third element of a batch stays Keras's sample weights, so `fit`'s
`sample_weight=` and `class_weight=` work on cached batches too.
"""

import zipfile
from pathlib import Path

import numpy as np

from kd_keras import atomic
from kd_keras.data.splits import PREFETCH_BATCHES, without_autotune
from kd_keras.errors import CacheMismatchError

# The keys of a Distiller batch's `x` that carries precomputed teacher
# outputs: `{IMAGES: inputs, TEACHER_LOGITS: logits}`.
IMAGES = "images"
TEACHER_LOGITS = "teacher_logits"

# Largest |cached - fresh| teacher logit accepted as the same batch. Cached
# and fresh logits of one batch agree to float round-off (~1e-5); a
# different crop or order of the images moves them by far more.
_SAME_BATCH_TOLERANCE = 1e-3


class TeacherLogitCache:
    """Teacher logits of a deterministic `(x, y)` (or `(x, y,
    sample_weight)`) batch pipeline, per epoch.

    Args:
        teacher: the frozen teacher, a `keras.Model` returning logits (use
            `kd_keras.distill.teacher.teacher_for_inference` for the fast copy).
        make_batches: `make_batches(epochs, start_epoch)` returning the
            `tf.data` pipeline of the batches of epochs
            `start_epoch .. epochs - 1`, back to back, the same batches on
            every call (as `kd_keras.make_dataset(..., seed=, epochs=,
            start_epoch=)` makes).
        steps_per_epoch: batches per epoch.
        folder: optional folder where each epoch's logits are kept
            (`epoch_<e>.npz`) and read back by any cache on the same folder
            and the same batches; made if missing.

    Example:

    >>> def make_batches(epochs, start_epoch):
    ...     return make_dataset(x, y, batch_size=128, training=True, seed=0,
    ...                         epochs=epochs, start_epoch=start_epoch)
    >>> cache = TeacherLogitCache(teacher, make_batches, steps_per_epoch=79)
    >>> distiller.fit(cache.dataset(epochs=4), steps_per_epoch=79, epochs=4)
    """

    def __init__(self, teacher, make_batches, *, steps_per_epoch, folder=None):
        self.teacher = teacher
        self.make_batches = make_batches
        self.steps_per_epoch = int(steps_per_epoch)
        self.folder = None if folder is None else Path(folder)
        self._epochs = {}  # epoch -> list of (batch, classes) float32 arrays
        self._from_file = set()  # Epochs read from `folder`, not yet checked.
        self._forward = None

    def _teacher_logits(self, images):
        import tensorflow as tf

        if self._forward is None:
            self._forward = tf.function(
                lambda x: self.teacher(x, training=False), reduce_retracing=True
            )
        return np.asarray(self._forward(images), dtype="float32")

    def epoch_file(self, epoch):
        """Where `epoch`'s logits are kept (`None` without a folder)."""
        return None if self.folder is None else self.folder / f"epoch_{epoch}.npz"

    def epoch_logits(self, epoch):
        """The teacher's logits of every batch of `epoch` (read from the
        folder, or computed, on first use; then kept)."""
        if epoch not in self._epochs:
            stored = self._read(epoch)
            if stored is not None:
                self._epochs[epoch] = stored
                self._from_file.add(epoch)
            else:
                self._compute(epoch)
        return self._epochs[epoch]

    def _compute(self, epoch):
        batches = self.make_batches(epoch + 1, epoch).take(self.steps_per_epoch)
        self._epochs[epoch] = [self._teacher_logits(batch[0]) for batch in batches]
        self._from_file.discard(epoch)
        path = self.epoch_file(epoch)
        if path is not None:
            with atomic.atomic_path(path) as tmp:
                np.savez(tmp, *self._epochs[epoch])

    def _read(self, epoch):
        """`epoch`'s logits from its file, or None (no folder, no file, or
        a file that is not a list of `steps_per_epoch` logit arrays)."""
        path = self.epoch_file(epoch)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = [stored[f"arr_{i}"] for i in range(len(stored.files))]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # Damaged: computed again and replaced.
        if len(arrays) != self.steps_per_epoch or any(a.ndim != 2 for a in arrays):
            return None
        return [np.asarray(a, dtype="float32") for a in arrays]

    def fill(self, epochs):
        """Computes (or reads) the logits of epochs `0 .. epochs - 1`, each
        checked against the batches as `dataset` does; with a folder, every
        later cache on it then reads them instead of running the teacher."""
        for epoch in range(int(epochs)):
            self.check_epoch(epoch)

    @property
    def cached_epochs(self):
        """The epochs whose logits are held, sorted."""
        return sorted(self._epochs)

    def check_epoch(self, epoch):
        """Raises `CacheMismatchError` unless the first batch that
        `make_batches` now yields for `epoch` has the cached logits."""
        cached = self.epoch_logits(epoch)[0]
        for batch in self.make_batches(epoch + 1, epoch).take(1):
            fresh = self._teacher_logits(batch[0])
            difference = (
                float(np.max(np.abs(fresh - cached))) if fresh.shape == cached.shape else np.inf
            )
            if difference > _SAME_BATCH_TOLERANCE and epoch in self._from_file:
                # A file of other batches or another teacher: computed again.
                self._compute(epoch)
                cached = self._epochs[epoch][0]
                difference = float(np.max(np.abs(fresh - cached)))
            self._from_file.discard(epoch)
            if difference > _SAME_BATCH_TOLERANCE:
                raise CacheMismatchError(
                    f"epoch {epoch}: the batches are not the ones whose teacher logits "
                    f"were cached (largest logit difference {difference:.3g}). "
                    "make_batches must yield the same batches on every call: make the "
                    "pipelines under the same keras.utils.set_random_seed, or do not "
                    "cache (cache_teacher_logits=False)."
                )

    def dataset(self, epochs, start_epoch=0):
        """`make_batches(epochs, start_epoch)` with each batch's teacher
        logits in `x`: `({"images": x, "teacher_logits": logits}, y)` (and
        the batches' sample weights, if any, third), which
        `kd_keras.Distiller` uses instead of running the teacher.

        Raises:
            CacheMismatchError: if `make_batches` no longer yields the
                batches whose logits were cached (checked on the first
                batch of each epoch).
        """
        for epoch in range(start_epoch, epochs):
            self.check_epoch(epoch)

        logits = [
            batch for epoch in range(start_epoch, epochs) for batch in self.epoch_logits(epoch)
        ]
        return _zip_logits(self.make_batches(epochs, start_epoch), logits)


def with_teacher_logits(dataset, teacher):
    """A fixed `(x, y)` or `(x, y, sample_weight)` dataset (validation: no
    shuffling, no augmentation) with the teacher's logits of each batch in
    `x`, `({"images": x, "teacher_logits": logits}, y)`, computed once.
    Iterating it again replays the same logits."""
    import tensorflow as tf

    forward = tf.function(lambda x: teacher(x, training=False))
    logits = [np.asarray(forward(batch[0]), dtype="float32") for batch in dataset]
    return _zip_logits(dataset, logits)


def _zip_logits(batches, logits):
    """`({"images": x, "teacher_logits": logits}, y[, sample_weight])`
    batches: `batches` zipped with `logits`, a list of per-batch arrays in
    the same order."""
    import tensorflow as tf

    classes = logits[0].shape[-1] if logits else 0
    replayed = tf.data.Dataset.from_generator(
        lambda: iter(logits), output_signature=tf.TensorSpec((None, classes), tf.float32)
    )
    # A generator's length is unknown to tf.data; Keras's evaluate then
    # counts one empty step past the end (its mean loss came out 3/4 of the
    # true one on 3 batches). State the length.
    replayed = replayed.apply(tf.data.experimental.assert_cardinality(len(logits)))
    return without_autotune(
        tf.data.Dataset.zip((batches, replayed))
        .map(
            lambda batch, teacher_logits: (
                {IMAGES: batch[0], TEACHER_LOGITS: teacher_logits},
                *batch[1:],
            )
        )
        .prefetch(PREFETCH_BATCHES)
    )
