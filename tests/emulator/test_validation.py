"""Auth and every documented rule of the create request, each naming its param."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.emulator._support import VALID, SpecClient
from zimage_dagster.emulator import EmulatorServer
from zimage_dagster.emulator.addresses import classify_host


@pytest.fixture
def api(emulator: EmulatorServer) -> Iterator[SpecClient]:
    with SpecClient(emulator.url, emulator.api_key) as client:
        yield client


def _error(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


# ------------------------------------------------------------------------------------------ auth


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authentication required"),
        ({"Authorization": "Bearer nope"}, "Invalid or expired token"),
        ({"Authorization": "Basic sk-abc"}, "Invalid or expired token"),
        ({"Authorization": "Bearer"}, "Invalid or expired token"),
    ],
)
def test_missing_or_wrong_token_is_401(
    emulator: EmulatorServer, headers: dict[str, str], message: str
) -> None:
    with SpecClient(emulator.url) as api:
        for method, path in (
            ("POST", "/v1/images/generations"),
            ("GET", "/v1/tasks/task-unified-1-abcdefgh"),
        ):
            error = _error(api.request(method, path, json=VALID, headers=headers), 401)
            assert error == {
                "code": "unauthorized",
                "message": message,
                "type": "authentication_error",
            }
        # /v1/credits errors follow that document: the older envelope with the status as code
        error = _error(api.get("/v1/credits", headers=headers), 401)
        assert error == {"code": 401, "message": message, "type": "authentication_error"}
    assert emulator.stats()["tasks_created"] == 0


def test_configured_keys(emulator: EmulatorServer) -> None:
    emulator.configure(api_keys=["sk-evo-one", "sk-evo-two"])
    assert emulator.api_key == "sk-evo-one"
    with SpecClient(emulator.url) as api:
        ok = {"Authorization": "Bearer sk-evo-two"}
        assert api.get("/v1/credits", headers=ok).status_code == 200
        assert (
            api.get("/v1/credits", headers={"Authorization": "Bearer sk-evo-three"}).status_code
            == 401
        )
    # On request, /v1/credits uses the current envelope (which its own document does not describe,
    # hence a plain client here).
    emulator.configure(legacy_credits_errors=False)
    r = httpx.get(
        f"{emulator.url}/v1/credits", headers={"Authorization": "Bearer sk-other"}, trust_env=False
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    emulator.reset()
    assert emulator.api_key == "sk-evo-emulator-local"


# ------------------------------------------------------------------------------------ create body


@pytest.mark.parametrize(
    ("content", "message_part"),
    [(b"", "required"), (b"{not json", "valid JSON"), (b"[1, 2]", "JSON object"), (b'"text"', "JSON object"),
     (b"[" * 50000, "valid JSON"), (b"null", "JSON object")],
)  # fmt: skip
def test_body_must_be_a_json_object(api: SpecClient, content: bytes, message_part: str) -> None:
    error = _error(
        api.post(
            "/v1/images/generations", content=content, headers={"content-type": "application/json"}
        )
    )
    assert error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"
    assert message_part in error["message"]


LONG_URL = "https://hooks.example.com/" + "a" * 2030

BAD_FIELDS: list[tuple[str, dict[str, Any]]] = [
    ("model", {"model": None}),
    ("model", {"model": "z-image-pro"}),
    ("model", {"model": 3}),
    ("prompt", {"prompt": None}),
    ("prompt", {"prompt": ""}),
    ("prompt", {"prompt": "   "}),
    ("prompt", {"prompt": 42}),
    ("prompt", {"prompt": ["a"]}),
    ("prompt", {"prompt": "x" * 2001}),
    ("size", {"size": "5:4"}),
    ("size", {"size": "1024X768"}),
    ("size", {"size": "375x1024"}),
    ("size", {"size": "1024x1537"}),
    ("size", {"size": "0x0"}),
    ("size", {"size": 1024}),
    ("size", {"size": " 1:1"}),
    ("seed", {"seed": 0}),
    ("seed", {"seed": -5}),
    ("seed", {"seed": 2147483648}),
    ("seed", {"seed": 1.0}),
    ("seed", {"seed": 1.5}),
    ("seed", {"seed": True}),
    ("seed", {"seed": "123"}),
    ("nsfw_check", {"nsfw_check": "true"}),
    ("nsfw_check", {"nsfw_check": 1}),
    ("callback_url", {"callback_url": 5}),
    ("callback_url", {"callback_url": "http://hooks.example.com/cb"}),
    ("callback_url", {"callback_url": "ftp://hooks.example.com/cb"}),
    ("callback_url", {"callback_url": "hooks.example.com/cb"}),
    ("callback_url", {"callback_url": "https://"}),
    ("callback_url", {"callback_url": LONG_URL}),
    ("callback_url", {"callback_url": "https://hooks.example.com:99999/"}),
    ("callback_url", {"callback_url": "https://hooks.exa mple.com/"}),
]


@pytest.mark.parametrize(
    ("param", "fields"), BAD_FIELDS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD_FIELDS)]
)
def test_each_rule_names_its_param(
    api: SpecClient, emulator: EmulatorServer, param: str, fields: dict[str, Any]
) -> None:
    body = {**VALID, **fields}
    body = {k: v for k, v in body.items() if not (k in ("model", "prompt") and v is None)}
    error = _error(api.post("/v1/images/generations", json=body))
    assert error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert emulator.stats()["tasks_created"] == 0


GOOD_FIELDS: list[dict[str, Any]] = [
    {"size": s} for s in ("1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "1:2", "2:1", "376x1536", "1536x376")
] + [
    {"seed": 1}, {"seed": 2147483647}, {"seed": None}, {"nsfw_check": True}, {"nsfw_check": None},
    {"prompt": "x" * 2000}, {"prompt": "日本語のプロンプト 🐱"}, {"callback_url": "https://hooks.example.com/cb?x=1"},
    {"callback_url": LONG_URL[:2048]}, {"callback_url": "https://[2606:4700::1]/cb"}, {"callback_url": None},
    {"unknown_field": "ignored"},
]  # fmt: skip


@pytest.mark.parametrize("fields", GOOD_FIELDS, ids=[str(i) for i in range(len(GOOD_FIELDS))])
def test_valid_variants_are_accepted(api: SpecClient, fields: dict[str, Any]) -> None:
    assert api.post("/v1/images/generations", json={**VALID, **fields}).status_code == 200


INTERNAL_CALLBACKS = [
    "https://127.0.0.1/cb", "https://127.1.2.3/cb", "https://localhost/cb", "https://LOCALHOST./cb",
    "https://api.localhost/cb", "https://10.0.0.8/cb", "https://172.16.5.4/cb", "https://172.31.255.255/cb",
    "https://192.168.1.1/cb", "https://169.254.169.254/latest/meta-data", "https://0.0.0.0/cb", "https://0/cb",
    "https://100.64.0.1/cb", "https://2130706433/cb", "https://0x7f000001/cb", "https://0177.0.0.1/cb",
    "https://127.1/cb", "https://0x7f.0.0.1/cb", "https://[::1]/cb", "https://[::]/cb", "https://[fe80::1]/cb",
    "https://[fc00::5]/cb", "https://[::ffff:127.0.0.1]/cb", "https://[::ffff:a00:1]/cb", "https://[64:ff9b::a00:1]/cb",
    "https://[2002:c0a8:0101::1]/cb", "https://intranet/cb", "https://db.internal/cb", "https://printer.local/cb",
    "https://user:pw@10.1.1.1:8443/cb", "https://999.1.1.1/cb", "https://224.0.0.1/cb",
]  # fmt: skip


@pytest.mark.parametrize("url", INTERNAL_CALLBACKS)
def test_internal_callback_addresses_are_refused(api: SpecClient, url: str) -> None:
    error = _error(api.post("/v1/images/generations", json={**VALID, "callback_url": url}))
    assert error["param"] == "callback_url"


def test_loopback_callbacks_only_with_the_test_setting(
    api: SpecClient, emulator: EmulatorServer
) -> None:
    body = {**VALID, "callback_url": "http://127.0.0.1:9/cb"}
    assert _error(api.post("/v1/images/generations", json=body))["param"] == "callback_url"
    emulator.configure(allow_loopback_callbacks=True)
    assert api.post("/v1/images/generations", json=body).status_code == 200
    assert (
        api.post(
            "/v1/images/generations", json={**body, "callback_url": "https://localhost:9/cb"}
        ).status_code
        == 200
    )
    for still_bad in (
        "http://10.0.0.1/cb",
        "http://hooks.example.com/cb",
        "https://[::ffff:127.0.0.1]/cb",
    ):
        assert (
            _error(api.post("/v1/images/generations", json={**body, "callback_url": still_bad}))[
                "param"
            ]
            == "callback_url"
        )


def test_classify_host_examples() -> None:
    assert classify_host("172.32.0.1") == "public"
    assert classify_host("hooks.example.com") == "public"
    assert classify_host("foo.0x7f000001") == "invalid"
    assert classify_host("fe80::1%eth0") == "internal"


def test_unknown_routes_and_methods_answer_in_the_envelope(api: SpecClient) -> None:
    r = api.get("/v1/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = api.get("/v1/tasks")  # no redirect to /v1/tasks/
    assert r.status_code == 404
    r = api.get("/v1/images/generations")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
