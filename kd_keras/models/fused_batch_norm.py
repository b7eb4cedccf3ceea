"""`FusedBatchNormalization`: Keras's batch norm on TensorFlow's fused kernel.

Keras 3's `BatchNormalization` computes batch statistics and the
normalisation as separate ops (`tf.nn.moments`, then
`tf.nn.batch_normalization`), several passes over every activation. On a
CPU that is a large share of a small CIFAR ResNet's training step.
TensorFlow's `FusedBatchNormV3` kernel (oneDNN on x86) does the same
arithmetic in one pass forward and one backward, and accepts bfloat16
activations with float32 statistics.

`FusedBatchNormalization` is a drop-in subclass: same constructor, same
config, same four weights in the same order, same moving-average rule
(Keras's: the *biased* batch variance, where TensorFlow's kernel returns the
Bessel-corrected one, which is undone here). Measured on a 2-core CPU,
it made a ResNet-14 training step about 1.3x faster in float32 and 1.6x in
mixed bfloat16 (`python -m benchmarks.throughput`, docs/speed.md).

Where the fused kernel does not apply (a mask, renorm, synchronised
statistics, a non-4D input, an axis other than the last, another backend)
it runs Keras's own code.

Shipping: `with_keras_batch_norm(model)` returns a copy with stock
`keras.layers.BatchNormalization` layers and the same weights, which loads
without kd_keras, and `with_local_batch_norm(model)` a copy whose
synchronised batch norm (`--sync-batch-norm`, for several devices) is plain
per-device batch norm again: the same inference, and a model that trains on
one device without a `tf.distribute` strategy's collectives. The pipeline
saves models both ways.
"""

import keras

from kd_keras.models.layer_swap import copy_weights, rebuild, replace_layer_classes

# TensorFlow's fused kernel rejects a smaller epsilon.
_MIN_FUSED_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="kd_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel.

    Same arguments, weights and results (up to float round-off) as the
    stock layer; see the module docstring for why and when it is faster.

    Example:

    >>> x = keras.Input((32, 32, 16))
    >>> y = FusedBatchNormalization(momentum=0.9)(x)
    """

    def _fused_applies(self, inputs, mask):
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and self.epsilon >= _MIN_FUSED_EPSILON
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused_applies(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = inputs
        if x.dtype not in (tf.float32, tf.bfloat16, tf.float16):
            x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            # The kernel returns the Bessel-corrected variance n/(n-1) * v;
            # Keras averages the biased one. Undo it so the moving
            # statistics match the stock layer.
            count = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * (count - 1.0) / count
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum + variance * (1.0 - momentum)
            )
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x,
                gamma,
                beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
        return tf.cast(outputs, self.compute_dtype)


def with_keras_batch_norm(model):
    """A copy of `model` with stock `BatchNormalization` layers.

    Every `FusedBatchNormalization` becomes a `keras.layers.BatchNormalization`
    with the same config and weights, so the copy saves to a `.keras` file
    that loads with plain Keras (no kd_keras import, `safe_mode=True`).

    Args:
        model: a functional `keras.Model`.

    Returns:
        A new functional model sharing no variables with `model`; `model`
        itself if it has no fused batch-norm layer.

    Raises:
        ValueError: if `model` is not a functional model.
    """
    return replace_layer_classes(model, FusedBatchNormalization, keras.layers.BatchNormalization)


def with_fused_batch_norm(model):
    """A copy of `model` whose stock `BatchNormalization` layers are
    `FusedBatchNormalization` (same config and weights): the fast form for
    training on TensorFlow.

    Args:
        model: a functional `keras.Model`.

    Returns:
        A new functional model; `model` itself if it has no stock
        batch-norm layer.

    Raises:
        ValueError: if `model` is not a functional model.
    """
    return replace_layer_classes(model, keras.layers.BatchNormalization, FusedBatchNormalization)


def with_local_batch_norm(model):
    """A copy of `model` whose synchronised batch-norm layers
    (`synchronized=True`) compute per-device statistics again.

    Inference is unchanged (it uses the moving statistics either way); the
    copy fine-tunes on one device like any model, with no cross-replica
    collectives.

    Args:
        model: a functional `keras.Model`.

    Returns:
        A new functional model with the same weights; `model` itself if no
        batch-norm layer is synchronised.

    Raises:
        ValueError: if a layer must change and `model` is not functional.
    """
    names = [
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.synchronized
    ]
    if not names:
        return model

    def local(entry):
        return {**entry, "config": {**entry["config"], "synchronized": False}}

    copy = rebuild(model, edit={name: local for name in names})
    copy_weights(model, copy)
    return copy
