"""Benchmarks of zimage-dagster (measurements, not tests): ``make bench`` or
``python -m benchmarks.run [NAME ...] [--quick]``. See ``benchmarks/run.py``."""
