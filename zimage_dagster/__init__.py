"""zimage-dagster: Z-Image-Turbo text-to-image generation as first-class Dagster assets."""

from dagster_shared.libraries import DagsterLibraryRegistry

from zimage_dagster._version import __version__

DagsterLibraryRegistry.register("zimage-dagster", __version__, is_dagster_package=False)

__all__ = ["__version__"]
