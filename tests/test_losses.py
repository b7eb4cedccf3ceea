"""Each distillation loss against an independent NumPy implementation of
its paper's formula, on random logits and features (values, not shapes),
in float32 and on bfloat16 inputs; the Distiller's gradients reach only the
student and the adapters; feature layers by name and by stage."""

import keras
import numpy as np
import pytest

from kd_keras import Distiller
from kd_keras.distill.losses import (
    DKD,
    PKT,
    RKD,
    AttentionTransfer,
    FeatureDistillation,
    FitNets,
    HintonKD,
    MultiTeacherKD,
    standardize_logits,
)
from kd_keras.models.resnet import build_resnet

BATCH, CLASSES = 6, 7
# bfloat16 keeps 8 bits of mantissa: inputs move by up to 0.4%.
TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-2}


def rng_logits(seed, scale=3.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=(BATCH, CLASSES))).astype("float32")


def labels(seed=0):
    return np.random.default_rng(seed).integers(0, CLASSES, BATCH)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kl(p, q):
    p, q = np.clip(p, 1e-7, 1), np.clip(q, 1e-7, 1)
    return np.sum(p * np.log(p / q), axis=-1)


def as_dtype(array, dtype):
    return keras.ops.cast(keras.ops.convert_to_tensor(array), dtype)


def value(loss, teacher, student, dtype, **kwargs):
    cast = keras.tree.map_structure(lambda a: as_dtype(a, dtype), (teacher, student))
    return float(loss(*cast, **kwargs))


@pytest.fixture(params=["float32", "bfloat16"])
def dtype(request):
    return request.param


# --- Logits -----------------------------------------------------------------


def np_standardize(z):
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("standardize", [False, True])
def test_hinton_kd_is_t2_kl_of_softened_distributions(dtype, temperature, standardize):
    t, s = rng_logits(1), rng_logits(2)
    if standardize:
        t_, s_ = np_standardize(t), np_standardize(s)
    else:
        t_, s_ = t, s
    expected = temperature**2 * kl(softmax(t_ / temperature), softmax(s_ / temperature)).mean()
    got = value(HintonKD(temperature, standardize=standardize), t, s, dtype)
    assert got == pytest.approx(expected, rel=TOLERANCE[dtype])
    assert expected > 0.01


def test_standardized_logits_have_zero_mean_and_unit_sample_std():
    z = rng_logits(3) * 10 + 5
    out = np.asarray(standardize_logits(z))
    np.testing.assert_allclose(out, np_standardize(z), rtol=1e-5, atol=1e-6)
    # Invariant to shifting and scaling the logits, the method's point.
    np.testing.assert_allclose(np.asarray(standardize_logits(3 * z - 2)), out, atol=1e-5)


def np_dkd(t, s, y, alpha, beta, temperature):
    """Zhao et al. 2022, eq. (1)-(5), written over the classes directly:
    b = [p_target, 1 - p_target]; p^ = softmax over the non-target
    classes only."""
    pt, ps = softmax(t / temperature), softmax(s / temperature)
    total = []
    for i, target in enumerate(y):
        bt = np.array([pt[i, target], 1 - pt[i, target]])
        bs = np.array([ps[i, target], 1 - ps[i, target]])
        tckd = np.sum(bt * np.log(bt / bs))
        rest = [c for c in range(CLASSES) if c != target]
        qt, qs = softmax(t[i, rest] / temperature), softmax(s[i, rest] / temperature)
        nckd = np.sum(qt * np.log(qt / qs))
        total.append(temperature**2 * (alpha * tckd + beta * nckd))
    return float(np.mean(total))


@pytest.mark.parametrize("alpha, beta, temperature", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_is_weighted_target_and_non_target_kd(dtype, alpha, beta, temperature):
    t, s, y = rng_logits(4), rng_logits(5), labels(1)
    loss = DKD(alpha=alpha, beta=beta, temperature=temperature, warmup_epochs=0)
    expected = np_dkd(t, s, y, alpha, beta, temperature)
    assert value(loss, t, s, dtype, y=y) == pytest.approx(expected, rel=TOLERANCE[dtype])
    # Each part counts: TCKD alone and NCKD alone differ from the sum.
    only_tckd = np_dkd(t, s, y, alpha, 0.0, temperature)
    assert 0 < only_tckd < expected


def test_dkd_with_standardized_logits():
    t, s, y = rng_logits(6), rng_logits(7), labels(2)
    expected = np_dkd(np_standardize(t), np_standardize(s), y, 1.0, 8.0, 2.0)
    loss = DKD(temperature=2.0, warmup_epochs=0, standardize=True)
    assert float(loss(t, s, y=y)) == pytest.approx(expected, rel=1e-5)


def test_dkd_warms_up_linearly_over_its_first_epochs():
    t, s, y = rng_logits(8), rng_logits(9), labels(3)
    full = np_dkd(t, s, y, 1.0, 8.0, 4.0)
    loss = DKD()  # warmup_epochs=20, as mdistiller: min(epoch / 20, 1), epochs from 1.
    for epoch, factor in ((0, 1 / 20), (4, 5 / 20), (19, 1.0), (50, 1.0)):
        loss.set_epoch(epoch)
        assert float(loss(t, s, y=y)) == pytest.approx(factor * full, rel=1e-5)


def test_dkd_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        DKD()(rng_logits(1), rng_logits(2))


@pytest.mark.parametrize("mode", ["mean", "weighted"])
def test_several_teachers(dtype, mode):
    t1, t2, s = rng_logits(10), rng_logits(11), rng_logits(12)
    other = keras.Sequential([keras.Input((CLASSES,)), keras.layers.Dense(CLASSES)])
    temperature, weights = 3.0, [0.25, 0.75]
    loss = MultiTeacherKD([other], mode=mode, teacher_weights=weights, temperature=temperature)
    q = softmax(s / temperature)
    p1, p2 = softmax(t1 / temperature), softmax(t2 / temperature)
    if mode == "mean":
        expected = temperature**2 * kl((p1 + p2) / 2, q).mean()
    else:
        expected = temperature**2 * (0.25 * kl(p1, q) + 0.75 * kl(p2, q)).mean()
    got = value(loss, [t1, t2], s, dtype)
    assert got == pytest.approx(expected, rel=TOLERANCE[dtype])
    # The mean of distributions is not the mean of the per-teacher losses.
    assert abs(kl((p1 + p2) / 2, q).mean() - (kl(p1, q) + kl(p2, q)).mean() / 2) > 1e-3


def test_sample_weights_weigh_each_example_as_keras_does():
    t, s = rng_logits(13), rng_logits(14)
    w = np.arange(BATCH, dtype="float32")
    per_example = 16.0 * kl(softmax(t / 4), softmax(s / 4))
    expected = np.sum(w * per_example) / BATCH
    assert float(HintonKD()(t, s, sample_weight=w)) == pytest.approx(expected, rel=1e-5)
    assert float(DKD(warmup_epochs=0)(t, s, y=labels(), sample_weight=np.zeros(BATCH))) == 0.0


# --- Features ---------------------------------------------------------------


def rng_features(seed, shape):
    return np.random.default_rng(seed).normal(size=(BATCH, *shape)).astype("float32")


def np_attention(f, p=2.0):
    q = (np.abs(f) ** p).mean(axis=-1).reshape(len(f), -1)
    return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)


def test_attention_transfer_is_beta_half_sum_of_map_distances(dtype):
    shapes_t = [(8, 8, 6), (4, 4, 12)]
    shapes_s = [(8, 8, 3), (4, 4, 5)]
    t = [rng_features(20 + i, shape) for i, shape in enumerate(shapes_t)]
    s = [rng_features(30 + i, shape) for i, shape in enumerate(shapes_s)]
    loss = AttentionTransfer(["a", "b"], ["c", "d"])
    expected = (
        1000
        / 2
        * sum(np.mean((np_attention(fs) - np_attention(ft)) ** 2, axis=-1) for ft, fs in zip(t, s))
    )
    assert value(loss, t, s, dtype) == pytest.approx(expected.mean(), rel=TOLERANCE[dtype] * 4)
    assert expected.mean() > 1e-2


def test_feature_distillation_equals_keras_distillation(dtype):
    t, s = rng_features(40, (4, 4, 3)), rng_features(41, (4, 4, 3))
    ours = FeatureDistillation(loss="mse", teacher_layer_name="x", student_layer_name="y")
    expected = np.mean((t - s) ** 2)
    assert value(ours, [t], [s], dtype) == pytest.approx(expected, rel=TOLERANCE[dtype])
    theirs = keras.distillation.FeatureDistillation(loss="mse")
    assert float(ours([t], [s])) == pytest.approx(float(theirs.compute_loss(t, s)), rel=1e-6)


def test_fitnets_regresses_through_its_adapter(dtype):
    loss = FitNets("a", "b")
    loss.build([(4, 4, 6)], [(4, 4, 3)])
    t, s = rng_features(50, (4, 4, 6)), rng_features(51, (4, 4, 3))
    kernel = loss.adapter.layers[0].kernel.numpy()[0, 0]  # (3, 6)
    epsilon = loss.adapter.layers[1].epsilon
    # Fresh batch norm in inference: (x - 0) / sqrt(1 + eps); then ReLU.
    regressed = np.maximum((s @ kernel) / np.sqrt(1 + epsilon), 0)
    expected = np.mean((regressed - t) ** 2)
    got = value(loss, [t], [s], dtype, training=False)
    assert got == pytest.approx(expected, rel=TOLERANCE[dtype])


# --- Validation -------------------------------------------------------------


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: HintonKD(temperature=0), "temperature"),
        (lambda: DKD(beta=-1), "beta"),
        (lambda: DKD(warmup_epochs=2.5), "warmup_epochs"),
        (lambda: AttentionTransfer(beta="big"), "beta"),
        (lambda: AttentionTransfer(["a"], ["b", "c"]), "pair up"),
        (lambda: MultiTeacherKD([], mode="mean"), "other_teachers"),
        (lambda: FeatureDistillation(teacher_layer_name="a"), "both"),
        (lambda: FeatureDistillation(loss="no_such_loss"), "loss"),
    ],
)
def test_bad_keywords_are_refused_naming_them_in_one_line(make, words):
    with pytest.raises(ValueError, match=words) as info:
        make()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "loss",
    [
        HintonKD(2.0, standardize=True),
        DKD(beta=4.0, warmup_epochs=5),
        FitNets("stage1", "stage2"),
        AttentionTransfer(beta=10.0),
        FeatureDistillation("mae", "x", "y"),
        PKT("a", "b"),
        RKD(distance_weight=1.0),
    ],
    ids=lambda loss: type(loss).__name__,
)
def test_config_round_trip(loss):
    config = loss.get_config()
    again = type(loss).from_config(config)
    assert again.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == config


# --- Through the Distiller --------------------------------------------------


def resnets(classes=4):
    keras.utils.set_random_seed(0)
    teacher = build_resnet(14, width=8, num_classes=classes, input_shape=(8, 8, 3), name="t")
    student = build_resnet(8, width=4, num_classes=classes, input_shape=(8, 8, 3), name="s")
    return teacher, student


def image_batch(classes=4, n=8):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, 8, 8, 3)).astype("float32"), rng.integers(0, classes, n)


def test_stage_names_resolve_to_the_last_block_of_each_stage():
    teacher, student = resnets()
    distiller = Distiller(student, teacher, distillation_losses=[AttentionTransfer()])
    features = distiller._features
    assert features.teacher_names[0] == ["s1b2_out", "s2b2_out", "s3b2_out"]
    assert features.student_names[0] == ["s1b1_out", "s2b1_out", "s3b1_out"]


def test_unknown_layer_and_stage_are_refused_naming_the_model():
    teacher, student = resnets()
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        Distiller(student, teacher, distillation_losses=[FitNets("nope", "stage1")])
    with pytest.raises(ValueError, match="no stage 4"):
        Distiller(student, teacher, distillation_losses=[FitNets("stage4", "stage1")])


def test_shape_mismatch_is_one_line_naming_both_layers_and_shapes():
    teacher, student = resnets()
    with pytest.raises(ValueError) as info:
        Distiller(student, teacher, distillation_losses=[FitNets("stage1", "stage2")])
    message = str(info.value)
    assert "\n" not in message
    for part in ("s1b2_out", "(8, 8, 8)", "s2b1_out", "(4, 4, 8)"):
        assert part in message
    with pytest.raises(ValueError, match="same shape"):
        Distiller(
            student, teacher, distillation_losses=[FeatureDistillation("mse", "stage2", "stage2")]
        )


def method_losses():
    other = resnets()[0]
    return {
        "hinton": [HintonKD()],
        "dkd": [DKD(warmup_epochs=0)],
        "ls-kd": [HintonKD(2.0, standardize=True)],
        "fitnets": [FitNets()],
        "at": [AttentionTransfer()],
        "fitnets+kd": [FitNets(), HintonKD()],
        "multi": [MultiTeacherKD([other])],
        "pkt": [PKT()],
        "rkd": [RKD()],
    }


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("method", list(method_losses()))
def test_gradients_reach_the_student_and_adapters_never_the_teacher(method, precision):
    keras.config.set_dtype_policy(precision)
    try:
        teacher, student = resnets()
        losses = method_losses()[method]
        distiller = Distiller(student, teacher, distillation_losses=losses)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        teacher_before = [w.copy() for w in teacher.get_weights()]
        adapters_before = [w.copy() for a in distiller.adapters for w in a.get_weights()]
        student_kernel = student.get_layer("s1b1_a_conv").kernel.numpy().copy()
        x, y = image_batch()
        logs = distiller.train_on_batch(x, y, return_dict=True)
        assert np.isfinite(logs["loss"]) and logs["distillation_loss"] > 0
        for before, after in zip(teacher_before, teacher.get_weights()):
            np.testing.assert_array_equal(before, after)
        assert not np.array_equal(student_kernel, student.get_layer("s1b1_a_conv").kernel.numpy())
        if method.startswith("fitnets"):
            adapter_kernel = distiller.adapters[0].layers[0].kernel.numpy()
            assert not np.array_equal(adapters_before[0], adapter_kernel)
        else:
            assert not distiller.adapters
        # What the optimizer updates: the student and adapters, nothing else.
        trained = {id(v) for v in distiller.trained_variables()}
        assert not trained & {id(v) for v in teacher.variables}
    finally:
        keras.config.set_dtype_policy("float32")


def test_feature_loss_through_distiller_equals_numpy_on_extracted_features():
    teacher, student = resnets()
    distiller = Distiller(student, teacher, distillation_losses=[AttentionTransfer()])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.0)
    x, y = image_batch()
    logs = distiller.test_on_batch(x, y, return_dict=True)
    t = distiller._features.teacher(x)
    s = distiller._features.student(x)
    expected = (
        500
        * sum(
            np.mean((np_attention(np.asarray(s[b])) - np_attention(np.asarray(t[a]))) ** 2, axis=-1)
            for a, b in zip(
                distiller._features.teacher_names[0], distiller._features.student_names[0]
            )
        ).mean()
    )
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-4)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)


def test_cached_teacher_logits_are_refused_for_feature_losses():
    teacher, student = resnets()
    distiller = Distiller(student, teacher, distillation_losses=[FitNets()])
    distiller.compile(optimizer="sgd")
    x, y = image_batch()
    assert distiller.needs_live_teacher
    assert not Distiller(student, teacher, distillation_losses=[DKD()]).needs_live_teacher
    with pytest.raises(ValueError, match="feature losses need the teacher"):
        distiller.train_on_batch({"images": x, "teacher_logits": np.zeros((8, 4))}, y)


def test_student_loss_weight_and_compile_alpha_must_agree():
    teacher, student = resnets()
    distiller = Distiller(student, teacher, distillation_losses=[DKD()], student_loss_weight=0.5)
    with pytest.raises(ValueError, match="contradicts"):
        distiller.compile(optimizer="sgd", alpha=0.2)
    with pytest.raises(ValueError, match="loss objects"):
        distiller.compile(optimizer="sgd", temperature=3.0)
    distiller.compile(optimizer="sgd")
    assert distiller.alpha == 0.5


def test_distiller_with_feature_losses_saves_and_reloads(tmp_path):
    teacher, student = resnets()
    distiller = Distiller(
        student,
        teacher,
        distillation_losses=[FitNets(), DKD(warmup_epochs=3)],
        distillation_loss_weights=[100.0, 1.0],
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    x, y = image_batch()
    distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    again = keras.saving.load_model(path)
    assert [type(loss).__name__ for loss in again.distillation_losses] == ["FitNets", "DKD"]
    assert again.distillation_loss_weights == [100.0, 1.0] and again.alpha == 0.5
    for a, b in zip(distiller.adapters[0].get_weights(), again.adapters[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    a = distiller.evaluate(x, y, verbose=0, return_dict=True)
    b = again.evaluate(x, y, verbose=0, return_dict=True)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_distiller_with_several_teachers_saves_their_weights(tmp_path):
    teacher, student = resnets()
    other = build_resnet(8, width=8, num_classes=4, input_shape=(8, 8, 3), name="other")
    distiller = Distiller(
        student, teacher, distillation_losses=[MultiTeacherKD([other], mode="weighted")]
    )
    distiller.compile(optimizer="sgd")
    x, y = image_batch()
    before = distiller.evaluate(x, y, verbose=0, return_dict=True)
    distiller.save(tmp_path / "d.keras")
    again = keras.saving.load_model(tmp_path / "d.keras")
    np.testing.assert_array_equal(
        again.distillation_losses[0].other_teachers[0].get_weights()[0], other.get_weights()[0]
    )
    after = again.evaluate(x, y, verbose=0, return_dict=True)
    assert after["distillation_loss"] == pytest.approx(before["distillation_loss"], rel=1e-5)


@pytest.mark.parametrize("loss", [FitNets, AttentionTransfer], ids=["fitnets", "at"])
def test_feature_losses_read_a_folded_bfloat16_inference_teacher(loss):
    """As the pipeline distils: the teacher folded and in bfloat16
    (`teacher_for_inference`) keeps its layer names, so stages resolve."""
    from kd_keras.distill.teacher import teacher_for_inference

    teacher, student = resnets()
    inference = teacher_for_inference(teacher, "bfloat16")
    distiller = Distiller(student, inference, distillation_losses=[loss()])
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    x, y = image_batch()
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["distillation_loss"] > 0
    assert distiller._features.teacher_names[0][-1] in ("s2b2_out", "s3b2_out")


# --- Relational (optional methods) -----------------------------------------


def test_pkt_is_kl_of_cosine_conditional_probabilities(dtype):
    t, s = rng_features(60, (9,)), rng_features(61, (4,))

    def conditional(f):
        f = f / (np.linalg.norm(f, axis=-1, keepdims=True) + 1e-7)
        similarity = (f @ f.T + 1) / 2
        return similarity / similarity.sum(axis=-1, keepdims=True)

    pt, ps = conditional(t), conditional(s)
    expected = np.mean(pt * np.log((pt + 1e-7) / (ps + 1e-7)))
    assert value(PKT("a", "b"), [t], [s], dtype) == pytest.approx(
        expected, rel=TOLERANCE[dtype] * 4
    )
    assert expected > 1e-4


def test_rkd_is_huber_of_normalised_distances_and_angles(dtype):
    t, s = rng_features(62, (9,)), rng_features(63, (4,))

    def huber(a, b):
        d = np.abs(a - b)
        return np.where(d < 1, 0.5 * d**2, d - 0.5)

    def distances(f):
        d = np.linalg.norm(f[:, None] - f[None], axis=-1)
        return d / d[d > 0].mean()

    def angles(f):
        e = f[None, :, :] - f[:, None, :]  # e[a, b] = f[b] - f[a]
        n = np.linalg.norm(e, axis=-1, keepdims=True)
        e = e / np.maximum(n, 1e-12)
        return np.einsum("abk,ack->abc", e, e)

    expected = (
        25 * huber(distances(s), distances(t)).mean() + 50 * huber(angles(s), angles(t)).mean()
    )
    got = value(RKD("a", "b"), [t], [s], dtype)
    assert got == pytest.approx(expected, rel=TOLERANCE[dtype] * 4)
    assert expected > 1e-2
