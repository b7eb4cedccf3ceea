"""Architectures: CIFAR ResNets, the model zoo, model names, batch-norm folding and fusing (Keras-free: depth, specs).

This package imports nothing on its own, so its Keras-free modules stay
Keras-free."""
