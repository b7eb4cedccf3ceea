"""Benchmarks of kd_keras (run as `python -m benchmarks.<name>`)."""
