"""The example project: `make demo` materializes it, `make dev` shows it in the Dagster UI.

The Python-built pieces live in `examples/` (`examples/project.py` says what each asset and job
is); `examples/defs/` holds the ones declared in YAML with the `zimage_dagster.ZImageComponent`
dg component (`dg check yaml` / `dg check defs` validate them).
"""

from pathlib import Path

import dagster as dg

from examples.project import build_defs

defs = dg.Definitions.merge(
    build_defs(),
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
)
