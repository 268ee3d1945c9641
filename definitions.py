"""The example project: `make demo` materializes it, `make dev` shows it in the Dagster UI.

The pieces live in `examples/` (`examples/project.py` says what each asset and job is).
"""

from examples.project import build_defs

defs = build_defs()
