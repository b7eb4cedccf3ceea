"""`fold_batch_norm`: the folded copy computes the same logits."""

import keras
import numpy as np
import pytest

from kd_keras import build_resnet
from kd_keras.models.folding import fold_batch_norm

IMAGES = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32")


def _with_random_statistics(model, seed=0):
    """Batch norms with non-trivial gamma, beta and moving statistics, so a
    wrong fold (a missing scale, a swapped mean) changes the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n),
                    rng.normal(0, 0.2, n),
                    rng.normal(0, 0.2, n),
                    rng.uniform(0.5, 2.0, n),
                ]
            )
    return model


@pytest.mark.parametrize("fused", [True, False], ids=["fused_bn", "keras_bn"])
def test_folded_resnet_matches_the_original_in_inference(fused):
    model = _with_random_statistics(build_resnet(8, width=4, fused_batch_norm=fused))
    folded = fold_batch_norm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert len(folded.layers) == len(model.layers) - 7  # Stem + 2 per block x 3.
    conv = folded.get_layer("stem_conv")
    assert conv.use_bias and not folded.trainable
    expected = model.predict(IMAGES, verbose=0)
    np.testing.assert_allclose(folded.predict(IMAGES, verbose=0), expected, atol=1e-4, rtol=1e-4)
    # The original is untouched.
    assert isinstance(model.get_layer("stem_bn"), keras.layers.BatchNormalization)
    assert not model.get_layer("stem_conv").use_bias


def test_folded_kernel_and_bias_are_the_hand_computed_ones():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")(inputs)
    outputs = keras.layers.BatchNormalization(epsilon=0.01, name="bn")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.arange(6, dtype="float32").reshape(1, 1, 2, 3)
    model.get_layer("conv").set_weights([kernel])
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    mean, var = np.array([0.5, -1.0, 2.0]), np.array([0.99, 3.99, 0.24])
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    folded = fold_batch_norm(model)
    new_kernel, bias = folded.get_layer("conv").get_weights()
    scale = gamma / np.sqrt(var + 0.01)  # = [1, 1, 1]
    np.testing.assert_allclose(new_kernel, kernel * scale, rtol=1e-6)
    np.testing.assert_allclose(bias, beta - mean * scale, rtol=1e-6)


def test_batch_norm_not_after_a_conv_is_kept():
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.BatchNormalization(name="bn_input")(inputs)
    x = keras.layers.Conv2D(3, 1, name="conv")(x)
    # The conv's output is used twice: folding would change the other use.
    y = keras.layers.BatchNormalization(name="bn_shared_conv")(x)
    model = keras.Model(inputs, keras.layers.Add()([x, y]))
    assert fold_batch_norm(model) is model


def test_sequential_model_is_folded():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    _with_random_statistics(model)
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    folded = fold_batch_norm(model)
    assert len(folded.layers) == len(model.layers) - 1
    np.testing.assert_allclose(folded(x), model(x, training=False), atol=1e-5)


def test_subclassed_model_is_refused_with_its_name():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="custom_net")
            self.conv = keras.layers.Conv2D(2, 3)
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(self.conv(x))

    net = Net()
    net(np.zeros((1, 5, 5, 3), "float32"))
    with pytest.raises(ValueError, match="custom_net"):
        fold_batch_norm(net)
