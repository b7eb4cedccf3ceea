"""Reporting: results tables and plots.

This package imports nothing on its own, so its Keras-free modules stay
Keras-free."""
