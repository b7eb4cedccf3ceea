"""Helpers of the Streamlit launcher (`app.py`).

This package never imports `kd_keras`, Keras or TensorFlow: the app reads
run folders as plain files and starts training as separate processes
(`python -m kd_keras run ...`, `python -m tuning ...`).
"""
