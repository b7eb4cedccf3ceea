"""Data: CIFAR-10 archives, other image sources, splits and tf.data pipelines.

This package imports nothing on its own, so its Keras-free modules stay
Keras-free."""
