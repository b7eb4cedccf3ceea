"""`FusedBatchNormalization` computes what Keras's BatchNormalization does."""

import subprocess
import sys

import keras
import numpy as np
import pytest

from kd_keras import build_resnet
from kd_keras.models.fused_batch_norm import (
    FusedBatchNormalization,
    with_fused_batch_norm,
    with_keras_batch_norm,
)
from kd_keras.train.speed import precision_scope

IMAGES = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype("float32")
LABELS = np.arange(16, dtype="int32") % 10


def _pair(precision="float32"):
    """The same tiny ResNet with fused and with stock batch norm."""
    with precision_scope(precision):
        keras.utils.set_random_seed(3)
        fused = build_resnet(8, width=4, fused_batch_norm=True)
        keras.utils.set_random_seed(3)
        stock = build_resnet(8, width=4, fused_batch_norm=False)
    stock.set_weights(fused.get_weights())
    return fused, stock


def _train_steps(model, steps=3):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    for _ in range(steps):
        loss = model.train_on_batch(IMAGES, LABELS)
    return float(loss)


def test_fused_layer_matches_stock_layer_in_training_and_inference():
    x = np.random.default_rng(1).normal(2.0, 3.0, (8, 5, 5, 6)).astype("float32")
    fused = FusedBatchNormalization(momentum=0.8)
    stock = keras.layers.BatchNormalization(momentum=0.8)
    fused.build(x.shape)
    stock.build(x.shape)
    gamma = np.linspace(0.5, 1.5, 6).astype("float32")
    beta = np.linspace(-1, 1, 6).astype("float32")
    for layer in (fused, stock):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    # Training: normalised with the batch's own (biased) statistics.
    expected = gamma * (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3) + beta
    np.testing.assert_allclose(fused(x, training=True), expected, atol=1e-4)
    np.testing.assert_allclose(stock(x, training=True), expected, atol=1e-4)
    # Moving statistics: Keras's rule, with the biased variance.
    np.testing.assert_allclose(fused.moving_mean, 0.2 * x.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, 0.8 + 0.2 * x.var((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance, stock.moving_variance, rtol=1e-6)
    # Inference: the moving statistics.
    np.testing.assert_allclose(fused(x, training=False), stock(x, training=False), atol=1e-5)


def test_training_a_resnet_with_fused_batch_norm_gives_the_stock_weights():
    fused, stock = _pair()
    fused_loss, stock_loss = _train_steps(fused), _train_steps(stock)
    assert fused_loss == pytest.approx(stock_loss, rel=1e-4)
    for a, b in zip(fused.get_weights(), stock.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(
        fused.predict(IMAGES, verbose=0), stock.predict(IMAGES, verbose=0), atol=1e-3
    )


def test_fused_layer_trains_under_mixed_bfloat16():
    fused, stock = _pair("mixed_bfloat16")
    assert fused.get_layer("stem_bn").compute_dtype == "bfloat16"
    assert _train_steps(fused) == pytest.approx(_train_steps(stock), rel=0.05)
    assert all(np.isfinite(w).all() for w in fused.get_weights())


def test_fused_layer_falls_back_to_keras_outside_its_kernel():
    x = np.random.default_rng(2).normal(size=(4, 7)).astype("float32")  # 2-D input.
    layer = FusedBatchNormalization()
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)
    np.testing.assert_allclose(layer(x, training=True), expected, atol=1e-4)


def test_conversions_keep_weights_and_predictions():
    fused, _ = _pair()
    _train_steps(fused, steps=2)
    stock = with_keras_batch_norm(fused)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in stock.layers)
    assert type(stock.get_layer("stem_bn")) is keras.layers.BatchNormalization
    assert stock.get_layer("stem_bn").momentum == 0.9
    np.testing.assert_allclose(
        stock.predict(IMAGES, verbose=0), fused.predict(IMAGES, verbose=0), atol=1e-4
    )
    back = with_fused_batch_norm(stock)
    assert type(back.get_layer("stem_bn")) is FusedBatchNormalization
    np.testing.assert_allclose(
        back.predict(IMAGES, verbose=0), fused.predict(IMAGES, verbose=0), atol=1e-4
    )
    assert with_keras_batch_norm(stock) is stock  # Nothing to convert.


@pytest.mark.slow
def test_converted_model_loads_without_kd_keras(tmp_path):
    fused, _ = _pair()
    path = tmp_path / "student.keras"
    with_keras_batch_norm(fused).save(path)
    np.save(tmp_path / "images.npy", IMAGES[:4])
    np.save(tmp_path / "expected.npy", fused.predict(IMAGES[:4], verbose=0))
    # A fresh interpreter that never imports kd_keras.
    script = (
        "import os, sys, numpy as np; os.environ['KERAS_BACKEND'] = 'tensorflow'\n"
        "import keras\n"
        f"m = keras.saving.load_model({str(path)!r}, safe_mode=True)\n"
        f"x = np.load({str(tmp_path / 'images.npy')!r})\n"
        f"e = np.load({str(tmp_path / 'expected.npy')!r})\n"
        "np.testing.assert_allclose(m.predict(x, verbose=0), e, atol=1e-4)\n"
        "assert 'kd_keras' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_synchronized_batch_norm_ships_as_local_batch_norm(tmp_path):
    from kd_keras.models.fused_batch_norm import with_local_batch_norm
    from kd_keras.train.measure import save_model

    model = build_resnet(8, width=4, synchronized_batch_norm=True)
    rng = np.random.default_rng(0)
    # Random weights, positive variances: the copy must carry real statistics.
    model.set_weights(
        [
            np.abs(rng.normal(1, 0.3, w.shape)).astype("float32")
            if "variance" in v.path
            else rng.normal(0, 0.3, w.shape).astype("float32")
            for v, w in zip(model.weights, model.get_weights())
        ]
    )
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.synchronized for layer in bns)
    save_model(model, tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    shipped = [
        layer for layer in loaded.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(shipped) == len(bns) and not any(layer.synchronized for layer in shipped)
    x = rng.integers(0, 256, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
    plain = build_resnet(8, width=4)
    assert with_local_batch_norm(plain) is plain  # Nothing to change.
