"""Conformance to the provider's documents: examples replay, and a property-based sweep of requests
generated from the spec's request schema plus mutations finds no 5xx and no schema violation.

(Every test using `SpecClient` validates each provider response against the documents as well.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.emulator._support import ROUTES, SpecClient, check_conforms
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.emulator.spec import CREATE_DOC, CREDITS_DOC, TASK_DOC, load_document

CREATE_OP = load_document(CREATE_DOC)["paths"]["/v1/images/generations"]["post"]
REQUEST_SCHEMA = load_document(CREATE_DOC)["components"]["schemas"]["ImageGenerationRequest"]
FIELDS = set(REQUEST_SCHEMA["properties"])
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[SpecClient]:
    emulator.configure(render_on_create=False, unlimited_credits=True, latency_s=0.0)
    with SpecClient(emulator.url, emulator.api_key) as client:
        yield client


# ---------------------------------------------------------------------------------- examples


def test_documented_create_examples_replay(api: SpecClient) -> None:
    examples = CREATE_OP["requestBody"]["content"]["application/json"]["examples"]
    assert examples
    for example in examples.values():
        response = api.post("/v1/images/generations", json=example["value"])
        assert response.status_code == 200
        task_id = response.json()["id"]
        assert api.get(f"/v1/tasks/{task_id}").json()["status"] == "completed"


def test_documented_success_examples_validate_against_their_own_schemas() -> None:
    # the checker itself is sound: the documents' own examples pass it
    credits_example = load_document(CREDITS_DOC)["paths"]["/v1/credits"]["get"]["responses"]["200"]
    check_conforms("credits", 200, credits_example["content"]["application/json"]["example"])
    for route, doc, path, method in (
        ("create", CREATE_DOC, "/v1/images/generations", "post"),
        ("task", TASK_DOC, "/v1/tasks/{task_id}", "get"),
        ("credits", CREDITS_DOC, "/v1/credits", "get"),
    ):
        for status, entry in load_document(doc)["paths"][path][method]["responses"].items():
            example = entry["content"]["application/json"].get("example")
            if example is not None:
                check_conforms(route, int(status), example)


def test_every_documented_error_status_is_producible(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    # 400, 401, 402, 404, 429 come from real rules (see the other tests); faults give any of them
    for route, (doc, spec_path, method) in ROUTES.items():
        path = spec_path.replace("{task_id}", "x")
        for status in load_document(doc)["paths"][spec_path][method]["responses"]:
            if status == "200":
                continue
            emulator.configure(http_faults=[{"route": route, "status": int(status), "count": 1}])
            response = api.request(method, path, json={})
            assert response.status_code == int(status)


# ---------------------------------------------------------------------------------- strategies


def _from_property(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A value valid under one property schema of the request (enough of JSON Schema for it)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema["type"]
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "boolean":
        return st.booleans()
    if kind == "string" and schema.get("format") == "uri":
        label = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)
        path = st.from_regex(r"(/[A-Za-z0-9._~-]{0,12}){0,4}", fullmatch=True)
        return st.builds(lambda a, b, p: f"https://{a}.{b}.com{p}", label, label, path)
    if kind == "string":
        return st.text(min_size=1, max_size=schema.get("maxLength", 100)).filter(
            lambda s: s.strip()
        )
    raise AssertionError(f"unhandled schema {schema}")


PROPERTIES = {name: _from_property(schema) for name, schema in REQUEST_SCHEMA["properties"].items()}
# `size` also takes WxH (the description says so; the enum does not)
PROPERTIES["size"] = st.one_of(
    PROPERTIES["size"],
    st.builds(lambda w, h: f"{w}x{h}", st.integers(376, 1536), st.integers(376, 1536)),
)
VALID_REQUESTS = st.fixed_dictionaries(
    {name: PROPERTIES[name] for name in REQUEST_SCHEMA["required"]},
    optional={name: s for name, s in PROPERTIES.items() if name not in REQUEST_SCHEMA["required"]},
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
BAD_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(
        [0, -1, 2**31, 2**63, -(2**63), 1.5, 1e308, True, False, "", " ", "0", "1:1 ", "x" * 2001]
    ),
    st.text(min_size=2001, max_size=5000),
    st.from_regex(r"[0-9]{1,6}x[0-9]{1,6}", fullmatch=True),
    st.sampled_from(
        [
            "http://example.com/",
            "https://10.0.0.1/",
            "https://[::1]/",
            "https://0x7f.1/",
            "javascript:alert(1)",
        ]
    ),
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    body = dict(draw(VALID_REQUESTS))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        field = draw(st.sampled_from(sorted(FIELDS)))
        if action == "replace":
            body[field] = draw(BAD_VALUES)
        elif action == "delete":
            body.pop(field, None)
        else:
            body[draw(st.text(min_size=1, max_size=10))] = draw(JSON_VALUES)
    return body


def _create(api: SpecClient, content: bytes) -> Any:
    response = api.post(
        "/v1/images/generations", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text  # SpecClient has already checked the schema
    return response


# ---------------------------------------------------------------------------------- properties


@SETTINGS
@given(body=VALID_REQUESTS)
def test_requests_valid_under_the_spec_are_accepted(api: SpecClient, body: dict[str, Any]) -> None:
    response = _create(api, json.dumps(body).encode())
    assert response.status_code == 200, (body, response.text)
    task = api.get(f"/v1/tasks/{response.json()['id']}").json()
    assert task["status"] in ("completed", "failed")  # latency 0; failed = moderation words


@SETTINGS
@given(body=mutated_requests())
def test_mutated_requests_get_200_or_a_400_naming_a_field(
    api: SpecClient, body: dict[str, Any]
) -> None:
    response = _create(api, json.dumps(body).encode())
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["code"] == "invalid_request"
        assert response.json()["error"].get("param") in FIELDS


@SETTINGS
@given(
    content=st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode()))
)
def test_arbitrary_bodies_never_break_the_server(api: SpecClient, content: bytes) -> None:
    response = _create(api, content)
    assert response.status_code in (200, 400)


@SETTINGS
@given(task_id=st.one_of(
    st.text(max_size=60),
    st.from_regex(r"task-unified-[0-9]{1,12}-[a-z0-9]{8}", fullmatch=True),
    st.from_regex(r"task-unified-[0-9A-Za-z]{0,12}-[A-Za-z0-9_]{0,10}", fullmatch=True),
))  # fmt: skip
def test_any_task_id_gets_a_documented_answer(api: SpecClient, task_id: str) -> None:
    # every character escaped, dots too, so that no client-side path normalisation changes the route
    response = api.get("/v1/tasks/" + quote(task_id, safe="").replace(".", "%2E"))
    assert response.status_code in (400, 404), response.text
    code = response.json()["error"]["code"]
    assert code == ("invalid_task_id" if response.status_code == 400 else "task_not_found")
