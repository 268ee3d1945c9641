"""The provider's OpenAPI documents, vendored as package data, and the rules read from them.

The emulator is written against these documents alone (never against the client's models), so the
constants the validator enforces come from the documents where the documents state them.

>>> CREATE_RULES.model_names
('z-image-turbo',)
>>> CREATE_RULES.max_prompt_length, CREATE_RULES.min_seed, CREATE_RULES.max_seed
(2000, 1, 2147483647)
>>> "16:9" in CREATE_RULES.ratios
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

CREATE_DOC = "z-image-turbo-image-generate.openapi.json"
TASK_DOC = "get-task-detail.openapi.json"
CREDITS_DOC = "get-credits.openapi.json"
DOCUMENTS: tuple[str, ...] = (CREATE_DOC, TASK_DOC, CREDITS_DOC)


@cache
def load_document(name: str) -> dict[str, Any]:
    """Return one vendored OpenAPI document (parsed JSON; treat it as read-only).

    >>> load_document(TASK_DOC)["openapi"]
    '3.1.0'
    """
    if name not in DOCUMENTS:
        raise KeyError(f"unknown document {name!r}; known: {', '.join(DOCUMENTS)}")
    text = (
        resources.files(__package__).joinpath("openapi").joinpath(name).read_text(encoding="utf-8")
    )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@dataclass(frozen=True)
class CreateRules:
    """The create request's documented limits.

    `size` ratios come from the schema's enum; the `WxH` side bounds are only stated in the
    field's description (376..1536), so they are written here.
    """

    model_names: tuple[str, ...]
    max_prompt_length: int
    ratios: tuple[str, ...]
    min_seed: int
    max_seed: int
    min_side: int = 376
    max_side: int = 1536
    max_callback_length: int = 2048


def _create_rules() -> CreateRules:
    props = load_document(CREATE_DOC)["components"]["schemas"]["ImageGenerationRequest"][
        "properties"
    ]
    return CreateRules(
        model_names=tuple(props["model"]["enum"]),
        max_prompt_length=int(props["prompt"]["maxLength"]),
        ratios=tuple(props["size"]["enum"]),
        min_seed=int(props["seed"]["minimum"]),
        max_seed=int(props["seed"]["maximum"]),
    )


CREATE_RULES = _create_rules()
