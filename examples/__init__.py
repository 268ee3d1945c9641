"""The example project that `make demo` and `make dev` run (see `definitions.py` at the root)."""
