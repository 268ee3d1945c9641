"""The client's models checked against the provider's OpenAPI documents (the contract).

Documented examples must parse; what the models write back (``model_dump(mode="json",
exclude_none=True)``) must validate against the documented schemas, ``$ref``s resolved within
each document.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from zimage_dagster.api import SUPPORTED_RATIOS, Credits, ErrorEnvelope, GenerationRequest, Task

REPO = Path(__file__).resolve().parents[2]
CREATE_DOC = "z-image-turbo-image-generate.openapi.json"
TASK_DOC = "get-task-detail.openapi.json"
CREDITS_DOC = "get-credits.openapi.json"


def spec_dir() -> Path:
    """``$ZIMAGE_SPEC_DIR``, else ``<repo>/../shared/spec``, else the emulator's vendored copy."""
    candidates: list[Path] = []
    if os.environ.get("ZIMAGE_SPEC_DIR"):
        candidates.append(Path(os.environ["ZIMAGE_SPEC_DIR"]))
    candidates += [
        REPO.parent / "shared" / "spec",
        REPO / "zimage_dagster" / "emulator" / "openapi",
    ]
    for folder in candidates:
        if (folder / CREATE_DOC).is_file():
            return folder
    searched = ", ".join(str(c) for c in candidates)
    pytest.fail(
        f"the provider's OpenAPI documents were not found; searched: {searched}", pytrace=False
    )


def load(name: str) -> dict[str, Any]:
    return json.loads((spec_dir() / name).read_text(encoding="utf-8"))


def validator(doc: dict[str, Any], ref: str) -> jsonschema.Draft202012Validator:
    """A validator for ``ref`` (e.g. ``#/components/schemas/Task``) with refs resolved in ``doc``."""
    schema = {**doc, "$ref": ref}
    return jsonschema.Draft202012Validator(schema)


def response_ref(doc: dict[str, Any], path: str, method: str, status: str) -> str:
    schema = doc["paths"][path][method]["responses"][status]["content"]["application/json"][
        "schema"
    ]
    ref: str = schema["$ref"]
    return ref


def error_examples(doc: dict[str, Any], path: str, method: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for status, resp in doc["paths"][path][method]["responses"].items():
        if status.startswith("2"):
            continue
        example = resp["content"]["application/json"]["example"]
        out.append((status, example))
    return out


def example_from_schema(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """An instance built from the schema's per-property ``example`` values."""
    if "$ref" in schema:
        target: Any = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return example_from_schema(doc, target)
    if schema.get("type") == "object" or "properties" in schema:
        return {k: example_from_schema(doc, s) for k, s in schema.get("properties", {}).items()}
    if "example" in schema:
        return copy.deepcopy(schema["example"])
    if "enum" in schema:
        return schema["enum"][0]
    return {"integer": 1, "number": 1.0, "boolean": False, "array": []}.get(
        schema.get("type", ""), "x"
    )


def dump(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


def test_spec_dir_is_found() -> None:
    assert (spec_dir() / TASK_DOC).is_file()


# --- create ---------------------------------------------------------------------------------


def test_create_request_example_parses_and_round_trips() -> None:
    doc = load(CREATE_DOC)
    body = doc["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"][
        "application/json"
    ]
    check = validator(doc, body["schema"]["$ref"])
    for example in body["examples"].values():
        req = GenerationRequest.model_validate(example["value"])
        check.validate(req.to_wire())


@pytest.mark.parametrize("ratio", SUPPORTED_RATIOS)
def test_requests_with_every_option_validate(ratio: str) -> None:
    doc = load(CREATE_DOC)
    check = validator(doc, "#/components/schemas/ImageGenerationRequest")
    req = GenerationRequest(
        prompt="a lighthouse",
        size=ratio,
        seed=2147483647,
        nsfw_check=True,
        callback_url="https://your-domain.com/webhooks/image-task-completed",
    )
    check.validate(req.to_wire())


def test_wxh_sizes_match_the_documented_description() -> None:
    """The document's ``size`` schema lists only ratios in its enum, yet its description
    documents ``WxH`` with sides 376-1536. We follow the description; this test pins both facts
    so a change in the document is noticed."""
    doc = load(CREATE_DOC)
    size = doc["components"]["schemas"]["ImageGenerationRequest"]["properties"]["size"]
    assert set(size["enum"]) == set(SUPPORTED_RATIOS)
    assert "376-1536" in size["description"]
    assert "1024x768" in size["description"]
    relaxed = copy.deepcopy(doc)
    relaxed_size = relaxed["components"]["schemas"]["ImageGenerationRequest"]["properties"]["size"]
    relaxed_size.pop("enum")
    relaxed_size["pattern"] = r"^([0-9]+:[0-9]+|[0-9]+x[0-9]+)$"
    validator(relaxed, "#/components/schemas/ImageGenerationRequest").validate(
        GenerationRequest(prompt="x", size="1024x768", seed=1).to_wire()
    )


def test_create_response_schema_example_round_trips() -> None:
    doc = load(CREATE_DOC)
    ref = response_ref(doc, "/v1/images/generations", "post", "200")
    example = example_from_schema(doc, {"$ref": ref})
    check = validator(doc, ref)
    check.validate(example)
    task = Task.model_validate(example)
    assert task.estimated_time == 10
    assert task.id.startswith("task-unified-")
    check.validate(dump(task))


@pytest.mark.parametrize("doc_name", [CREATE_DOC, TASK_DOC, CREDITS_DOC])
def test_documented_error_examples_parse_and_round_trip(doc_name: str) -> None:
    doc = load(doc_name)
    [(path, ops)] = doc["paths"].items()
    [(method, _)] = ops.items()
    examples = error_examples(doc, path, method)
    assert examples
    for status, example in examples:
        ref = doc["paths"][path][method]["responses"][status]["content"]["application/json"][
            "schema"
        ]["$ref"]
        check = validator(doc, ref)
        check.validate(example)
        envelope = ErrorEnvelope.model_validate(example)
        assert envelope.error.code == example["error"]["code"]
        assert envelope.error.message == example["error"]["message"]
        check.validate(dump(envelope))


def test_integer_codes_and_fallback_suggestion_come_from_the_credits_document() -> None:
    doc = load(CREDITS_DOC)
    examples = dict(error_examples(doc, "/v1/credits", "get"))
    env = ErrorEnvelope.model_validate(examples["429"])
    assert env.error.code == 429
    assert env.error.fallback_suggestion == "retry after 60 seconds"


# --- query ----------------------------------------------------------------------------------


def _task_doc_example(status: str) -> dict[str, Any]:
    doc = load(TASK_DOC)
    ref = response_ref(doc, "/v1/tasks/{task_id}", "get", "200")
    example = example_from_schema(doc, {"$ref": ref})
    example["status"] = status
    if status != "completed":
        example.pop("results")
    if status != "failed":
        example.pop("error")
    return example


@pytest.mark.parametrize("status", ["pending", "processing", "completed", "failed"])
def test_query_response_examples_round_trip(status: str) -> None:
    doc = load(TASK_DOC)
    ref = response_ref(doc, "/v1/tasks/{task_id}", "get", "200")
    check = validator(doc, ref)
    example = _task_doc_example(status)
    check.validate(example)
    task = Task.model_validate(example)
    assert task.status == status
    assert task.known_status is not None
    check.validate(dump(task))
    if status == "failed":
        assert task.error is not None
        assert task.error.code == "content_policy_violation"
    if status == "completed":
        assert task.result_url == "http://example.com/image.jpg"


def test_query_task_with_extra_server_fields_still_matches_schema() -> None:
    doc = load(TASK_DOC)
    check = validator(doc, response_ref(doc, "/v1/tasks/{task_id}", "get", "200"))
    example = {**_task_doc_example("processing"), "queue_position": 3, "eta": {"s": 4}}
    task = Task.model_validate(example)
    check.validate(dump(task))
    assert dump(task)["queue_position"] == 3


def test_schema_catches_a_wrong_dump() -> None:
    """The checks above can fail: a progress of 101 or an unknown status breaks the schema."""
    doc = load(TASK_DOC)
    check = validator(doc, response_ref(doc, "/v1/tasks/{task_id}", "get", "200"))
    bad = {**_task_doc_example("processing"), "status": "paused"}
    with pytest.raises(jsonschema.ValidationError):
        check.validate(dump(Task.model_validate(bad)))


# --- credits --------------------------------------------------------------------------------


def test_credits_example_round_trips() -> None:
    doc = load(CREDITS_DOC)
    ok = doc["paths"]["/v1/credits"]["get"]["responses"]["200"]["content"]["application/json"]
    check = validator(doc, ok["schema"]["$ref"])
    credits = Credits.model_validate(ok["example"])
    assert credits.remaining == 99416.4429
    assert credits.user_remaining == 1095.3996
    check.validate(dump(credits))
    assert dump(credits) == ok["example"]


def test_missing_spec_dir_fails_loudly_naming_the_folders(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ZIMAGE_SPEC_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path / "repo")
    with pytest.raises(pytest.fail.Exception) as info:
        spec_dir()
    message = str(info.value)
    assert "nowhere" in message
    assert str(tmp_path / "shared" / "spec") in message
    assert "openapi" in message
