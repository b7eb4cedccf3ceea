"""`TeacherLogitCache` and the Distiller's precomputed-logits batches."""

import keras
import numpy as np
import pytest

from kd_keras import Distiller, build_resnet, make_dataset
from kd_keras.distill.teacher_cache import TeacherLogitCache, with_teacher_logits
from kd_keras.errors import CacheMismatchError

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
LABELS = (np.arange(40) % 10).astype("int32")
BATCH = 16  # 3 batches per epoch, the last one of 8 images.
STEPS = 3


def make_batches(epochs, start_epoch):
    return make_dataset(
        IMAGES,
        LABELS,
        batch_size=BATCH,
        training=True,
        seed=7,
        epochs=epochs,
        start_epoch=start_epoch,
    )


@pytest.fixture(scope="module")
def teacher():
    keras.utils.set_random_seed(11)
    return build_resnet(8, width=4)


def test_cached_logits_are_the_teachers_logits_of_the_very_same_batches(teacher):
    cache = TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS)
    for start in (0, 1):  # From the start, and as a resumed trial would.
        batches = list(cache.dataset(epochs=3, start_epoch=start))
        assert len(batches) == (3 - start) * STEPS
        assert [len(b[0]["images"]) for b in batches[:STEPS]] == [16, 16, 8]
        for inputs, _ in batches:
            x, teacher_logits = inputs["images"], inputs["teacher_logits"]
            np.testing.assert_allclose(teacher_logits, teacher(x, training=False), atol=1e-5)
    assert cache.cached_epochs == [0, 1, 2]


def test_epochs_are_computed_once_and_replayed(teacher):
    cache = TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS)
    first = cache.epoch_logits(1)
    assert cache.epoch_logits(1) is first  # Not recomputed.
    assert cache.cached_epochs == [1]
    # Different epochs are different views: different logits.
    assert not np.allclose(cache.epoch_logits(0)[0], first[0])


def _counting(cache):
    """Records the batch size of every teacher pass `cache` makes."""
    calls, forward = [], cache._teacher_logits
    cache._teacher_logits = lambda x: calls.append(len(x)) or forward(x)
    return calls


def test_a_folder_shares_the_epochs_so_the_teacher_runs_once(teacher, tmp_path):
    keras.utils.set_random_seed(1)
    first = TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS, folder=tmp_path)
    first.fill(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0.npz", "epoch_1.npz"]
    second = TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS, folder=tmp_path)
    calls = _counting(second)
    batches = list(second.dataset(epochs=2))
    # Only the check of each epoch's first batch; every logit from the files.
    assert calls == [BATCH, BATCH]
    for epoch in (0, 1):
        for mine, theirs in zip(second.epoch_logits(epoch), first.epoch_logits(epoch)):
            np.testing.assert_array_equal(mine, theirs)
    for inputs, _ in batches:
        np.testing.assert_allclose(
            inputs["teacher_logits"], teacher(inputs["images"], training=False), atol=1e-5
        )


def test_a_stale_or_damaged_file_is_computed_again(teacher, tmp_path):
    keras.utils.set_random_seed(1)
    TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS, folder=tmp_path).fill(1)
    old = (tmp_path / "epoch_0.npz").read_bytes()
    # Other batches (another global seed): the file is not theirs.
    keras.utils.set_random_seed(2)
    cache = TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS, folder=tmp_path)
    for inputs, _ in cache.dataset(epochs=1):
        np.testing.assert_allclose(
            inputs["teacher_logits"], teacher(inputs["images"], training=False), atol=1e-5
        )
    assert (tmp_path / "epoch_0.npz").read_bytes() != old
    (tmp_path / "epoch_0.npz").write_bytes(old[:100])  # Truncated.
    cache = TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS, folder=tmp_path)
    calls = _counting(cache)
    cache.fill(1)
    assert calls == [16, 16, 8, 16]  # The epoch, then its check.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0.npz"]


def _distiller(teacher):
    keras.utils.set_random_seed(5)
    student = build_resnet(8, width=4)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), metrics=["accuracy"])
    return distiller


def test_replaying_other_batches_is_detected(teacher):
    keras.utils.set_random_seed(1)
    cache = TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS)
    cache.epoch_logits(0)
    # make_dataset's seeds combine with TensorFlow's global seed: under
    # another one, the same call yields other crops and another order.
    keras.utils.set_random_seed(2)
    with pytest.raises(CacheMismatchError, match="epoch 0: the batches are not"):
        cache.dataset(epochs=1)


def test_training_on_cached_logits_equals_training_with_the_teacher(teacher):
    # The pipelines are made under one global seed, as the tuner makes them.
    keras.utils.set_random_seed(0)
    cache = TeacherLogitCache(teacher, make_batches, steps_per_epoch=STEPS)
    val = make_dataset(IMAGES, LABELS, batch_size=BATCH, training=False)
    cached_batches = cache.dataset(2)
    cached_val = with_teacher_logits(val, teacher)
    live_batches = make_batches(2, 0)
    live, cached = _distiller(teacher), _distiller(teacher)
    h_live = live.fit(live_batches, validation_data=val, epochs=2, steps_per_epoch=STEPS, verbose=0)
    h_cached = cached.fit(
        cached_batches, validation_data=cached_val, epochs=2, steps_per_epoch=STEPS, verbose=0
    )
    for key in ("loss", "distillation_loss", "val_loss", "val_distillation_loss"):
        np.testing.assert_allclose(h_cached.history[key], h_live.history[key], rtol=1e-4)
    for a, b in zip(live.student.get_weights(), cached.student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_teacher_logits_as_third_element_are_refused_naming_the_new_layout(teacher):
    """The third element of a batch is Keras's sample weights; teacher
    logits put there (the former layout) are refused, naming where they go."""
    distiller = _distiller(teacher)
    x = IMAGES[:8].astype("float32")
    logits = np.asarray(teacher(x, training=False))
    message = r"sample_weight must have shape \(batch,\), got \(None, 10\).*teacher's logits"
    with pytest.raises(ValueError, match=message):
        distiller.fit(x, LABELS[:8], sample_weight=logits, verbose=0)


def _with_weights(dataset, weights):
    import tensorflow as tf

    per_batch = tf.data.Dataset.from_tensor_slices(weights).batch(BATCH)
    return tf.data.Dataset.zip((dataset, per_batch)).map(lambda b, w: (b[0], b[1], w))


def test_cached_batches_keep_sample_weights_and_train_as_the_live_teacher(teacher):
    weights = np.linspace(0.0, 2.0, 40).astype("float32")
    val = _with_weights(make_dataset(IMAGES, LABELS, batch_size=BATCH, training=False), weights)
    cached_val = with_teacher_logits(val, teacher)
    for (inputs, y, w), (x, y_plain, w_plain) in zip(cached_val, val):
        np.testing.assert_array_equal(inputs["images"], x)
        np.testing.assert_array_equal(y, y_plain)
        np.testing.assert_array_equal(w, w_plain)
        np.testing.assert_allclose(inputs["teacher_logits"], teacher(x, training=False), atol=1e-5)
    live, cached = _distiller(teacher), _distiller(teacher)
    h_live = live.fit(val, validation_data=val, epochs=2, shuffle=False, verbose=0)
    h_cached = cached.fit(
        cached_val, validation_data=cached_val, epochs=2, shuffle=False, verbose=0
    )
    for key in ("loss", "student_loss", "distillation_loss", "val_loss"):
        np.testing.assert_allclose(h_cached.history[key], h_live.history[key], rtol=1e-4)
    # The weights count: unweighted training reports another loss.
    unweighted = _distiller(teacher).fit(
        val.map(lambda x, y, w: (x, y)), epochs=1, shuffle=False, verbose=0
    )
    assert abs(unweighted.history["loss"][0] - h_live.history["loss"][0]) > 1e-3


def test_the_distilled_stage_validates_on_teacher_logits_computed_once(teacher):
    from types import SimpleNamespace

    from kd_keras.distill.losses import FitNets
    from kd_keras.train.pipeline import Pipeline
    from kd_keras.validation import validation_reuses_teacher_logits

    val = make_dataset(IMAGES, LABELS, batch_size=BATCH, training=False)
    config = SimpleNamespace(method="hinton", strategy="default")
    pipeline = SimpleNamespace(datasets={"val": val}, config=config)
    # The estimates (--dry-run, --budget) count by the same rule.
    assert validation_reuses_teacher_logits(config)
    kd = _distiller(teacher)
    replayed = Pipeline.validation_with_teacher_logits(pipeline, kd, teacher)
    batches = list(replayed)
    assert [len(x["images"]) for x, _ in batches] == [16, 16, 8]
    for (x, y), (images, labels) in zip(batches, val):
        np.testing.assert_array_equal(x["images"], images)
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_allclose(x["teacher_logits"], teacher(images, training=False), atol=1e-5)
    # The student alone runs on the replayed batches: same validation numbers.
    live = kd.evaluate(val, verbose=0, return_dict=True)
    cached = kd.evaluate(replayed, verbose=0, return_dict=True)
    for key in ("loss", "distillation_loss", "student_loss"):
        assert cached[key] == pytest.approx(live[key], rel=1e-5)
    # A loss that reads the teacher's layers keeps the plain split.
    keras.utils.set_random_seed(1)
    fitnets = Distiller(
        build_resnet(8, width=4), teacher, distillation_losses=[FitNets("stage1", "stage1")]
    )
    assert fitnets.needs_live_teacher
    assert Pipeline.validation_with_teacher_logits(pipeline, fitnets, teacher) is val
    config.method = "fitnets"
    assert not validation_reuses_teacher_logits(config)
    # So does a run under a tf.distribute strategy.
    config.method, config.strategy = "hinton", "mirrored"
    assert not validation_reuses_teacher_logits(config)
    assert Pipeline.validation_with_teacher_logits(pipeline, kd, teacher) is val
