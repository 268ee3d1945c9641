"""The example project's dg defs folder: components configured in YAML (`dg check yaml`).

`zimage_component/defs.yaml` declares the `poster_images` asset with `zimage_dagster.ZImageComponent`.
"""
