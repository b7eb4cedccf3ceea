"""Training: the three-stage pipeline, its callbacks, speed options, tf.distribute and the shared recipe.

This package imports nothing on its own, so its Keras-free modules stay
Keras-free."""
