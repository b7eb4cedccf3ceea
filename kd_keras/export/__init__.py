"""Shipping: SavedModel and LiteRT export, evaluation of exported models (Keras-free: spec).

This package imports nothing on its own, so its Keras-free modules stay
Keras-free."""
