"""The dg component: a prompt dataset in, a partitioned image asset out, configured in ``defs.yaml``.

>>> from zimage_dagster import ZImageComponent
>>> component = ZImageComponent(asset_name="posters", prompts=[{"key": "fox", "prompt": "a fox"}])
>>> component.partitioning, component.retry_policy.max_retries
('static', 3)

In a dg project (``dg scaffold defs zimage_dagster.ZImageComponent posters`` writes one)::

    type: zimage_dagster.ZImageComponent
    requirements:
      env: [ZIMAGE_API_KEY]
    attributes:
      asset_name: poster_images
      prompts: prompts.csv            # beside this defs.yaml, or in the project, or any URL
      resource:
        api_key: "{{ env.ZIMAGE_API_KEY }}"

The component *is* an :class:`~zimage_dagster.spec.ImageAssetSpec` (the one declaration of an
image asset: its attributes, defaults, descriptions and validation) plus a ``resource`` section.
:meth:`ZImageComponent.build_defs` resolves the paths and calls
:func:`~zimage_dagster.assets.build_image_definitions`, the one code path of the asset factory
(``build_image_assets`` goes through it too), then binds the ``resource`` section, if any: it
resolves to a :class:`~zimage_dagster.resource.ZImageResource` itself (the resource's own fields,
descriptions and validation), under ``resource_key``.

Secrets: ``resource.api_key`` accepts only a reference to an environment variable
(``"{{ env.ZIMAGE_API_KEY }}"`` or ``"{{ env('ZIMAGE_API_KEY') }}"``). It is *not* rendered at
load time, as Dagster's templating would do (it would hand the resource a plain string, which
Dagster then shows as the resource's configured value in the UI and keeps in the code location's
snapshot); the component reads the variable's name out of the reference and gives the resource
``dagster.EnvVar(name)``, which Dagster resolves in the run process and shows in the UI as the
variable's name only. A literal key is refused (without echoing it).
"""

import re
from pathlib import Path
from typing import Annotated, Any

import dagster as dg
import pydantic
from dagster.components.resolved.errors import ResolutionException

from zimage_dagster.assets import build_image_definitions
from zimage_dagster.component_scaffold import ZImageComponentScaffolder
from zimage_dagster.resource import ZImageResource
from zimage_dagster.spec import ImageAssetSpec, PromptSource

__all__ = ["ZImageComponent"]

# "{{ env.NAME }}" or "{{ env('NAME') }}" / '{{ env("NAME") }}', and nothing else around it.
_ENV_REFERENCE = re.compile(
    r"""^\s*\{\{\s*env(?:\.([A-Za-z_][A-Za-z0-9_]*)|\(\s*(['"])([A-Za-z_][A-Za-z0-9_]*)\2\s*\))\s*\}\}\s*$"""
)

_API_KEY_DOC = (
    "The EvoLink API key, as a reference to an environment variable: '{{ env.ZIMAGE_API_KEY }}'. "
    "The resource gets dagster.EnvVar(name), read in the run process, so the key is in no file, "
    "run config or UI. Unset: the ZIMAGE_API_KEY variable is read at run time."
)


def _resource_section() -> type[dg.Model]:
    """The YAML shape of ``resource:``: ZImageResource's own fields (names, descriptions), each
    optional (unset: the resource's default); values are checked by the resource itself."""
    fields: dict[str, Any] = {}
    for name, info in ZImageResource.model_fields.items():
        description = _API_KEY_DOC if name == "api_key" else info.description
        fields[name] = (Any, pydantic.Field(default=None, description=description))
    model: type[dg.Model] = pydantic.create_model(
        "ZImageResourceSection", __base__=dg.Model, **fields
    )
    return model


_ResourceSection = _resource_section()
_RESOURCES: dict[tuple[tuple[str, Any], ...], ZImageResource] = {}


def _api_key_env(where: str, value: Any) -> str:
    """``"{{ env.NAME }}"`` -> ``"NAME"``, without rendering the template (so without reading
    the key). Anything else is refused, and the value is never echoed: it may be a key."""
    match = _ENV_REFERENCE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ResolutionException(
            f"{where}: write a reference to an environment variable, e.g. "
            "'{{ env.ZIMAGE_API_KEY }}' (the value given is not shown). A literal key would sit in "
            "the defs file and in the resource's configuration shown by the Dagster UI; the "
            "reference becomes dagster.EnvVar, read only in the run process."
        )
    return match.group(1) or match.group(3)


def _resolve_resource(context: dg.ResolutionContext, value: Any) -> ZImageResource | None:
    """The ``resource:`` section as a :class:`ZImageResource` (the same object for the same
    settings, so that two components sharing a section and a resource key merge)."""
    if value is None:
        return None
    raw = value.model_dump(exclude_none=True) if isinstance(value, pydantic.BaseModel) else value
    where = ".".join(str(part) for part in context.path) or "resource"
    config: dict[str, Any] = {}
    for name, item in dict(raw).items():
        if item is None:
            continue
        if name == "api_key":
            config[name] = dg.EnvVar(_api_key_env(f"{where}.api_key", item))
        else:
            config[name] = context.at_path(name).resolve_value(item)
    cache_key = tuple(
        sorted((k, ("env", v) if isinstance(v, dg.EnvVar) else v) for k, v in config.items())
    )
    if cache_key not in _RESOURCES:
        try:
            _RESOURCES[cache_key] = ZImageResource(**config)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ResolutionException(problems) from None
    return _RESOURCES[cache_key]


@dg.scaffold_with(ZImageComponentScaffolder)
class ZImageComponent(dg.Component, ImageAssetSpec):
    """Z-Image-Turbo images from a prompt dataset, as one partitioned Dagster asset.

    The attributes are :class:`~zimage_dagster.spec.ImageAssetSpec`'s, plus ``resource``.
    """

    # Typed Any for Dagster's resolver check (it refuses pydantic models that are not Resolvable);
    # the validator below admits a ZImageResource or None.
    resource: Annotated[
        Any,
        dg.Resolver(
            _resolve_resource,
            model_field_type=_ResourceSection | None,
            inject_before_resolve=False,
            description=(
                "Bind a ZImageResource under resource_key, configured here ({api_key, base_url, "
                "timeouts, concurrency...}: the resource's own fields). Leave out when the "
                "project binds one itself."
            ),
        ),
    ] = None

    @pydantic.field_validator("resource")
    @classmethod
    def _a_resource(cls, value: Any) -> ZImageResource | None:
        if value is not None and not isinstance(value, ZImageResource):
            raise ValueError(f"must be a ZImageResource, not {type(value).__name__}")
        return value

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The factory's definitions for this spec, and the resource, if configured here."""
        parts = [build_image_definitions(self.image_asset_spec(context))]
        if self.resource is not None:
            parts.append(dg.Definitions(resources={self.resource_key: self.resource}))
        return dg.Definitions.merge(*parts)

    def image_asset_spec(self, context: dg.ComponentLoadContext) -> ImageAssetSpec:
        """The spec, with paths resolved against the defs folder and the project root."""
        fields = {name: getattr(self, name) for name in ImageAssetSpec.model_fields}
        fields["prompts"] = self._resolved_prompts(context)
        fields["storage"] = self._resolved_storage(context)
        return ImageAssetSpec(**fields)

    def _resolved_prompts(self, context: dg.ComponentLoadContext) -> PromptSource:
        if not isinstance(self.prompts, str) or _is_url(self.prompts):
            return self.prompts
        value = self.prompts
        path = Path(value).expanduser()
        if path.is_absolute():
            return str(path)
        candidates = _unique([_defs_dir(context) / path, Path(context.project_root) / path])
        for candidate in candidates:
            if candidate.exists():
                return str(candidate.resolve())
        looked = ", ".join(str(c) for c in candidates)
        raise dg.DagsterInvalidDefinitionError(
            f"{self.asset_name}: prompts: no file {value!r} (looked in: {looked})"
        )

    def _resolved_storage(self, context: dg.ComponentLoadContext) -> str:
        value = self.storage_root
        if _is_url(value):
            return value
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = Path(context.project_root) / path
        return str(path)


def _is_url(value: str) -> bool:
    return "://" in value


def _defs_dir(context: dg.ComponentLoadContext) -> Path:
    path = Path(context.path)
    return path.parent if path.suffix in {".yaml", ".yml", ".py"} else path


def _unique(paths: list[Path]) -> list[Path]:
    seen: dict[str, Path] = {}
    for path in paths:
        seen.setdefault(str(path.absolute()), path)
    return list(seen.values())
