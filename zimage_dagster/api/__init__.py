"""The Z-Image-Turbo API in Python: wire models, typed errors, sync and async clients."""
