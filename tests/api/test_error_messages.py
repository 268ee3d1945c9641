"""The API's HTTP errors read cleanly: ``HTTP <status> <code>: <message> (<method> <path>)``, the
status said once, whichever generation of the error envelope the server answers with.

Against the real emulator: ``/v1/credits`` answers in the older envelope, whose ``code`` is the
HTTP status number (it used to give ``HTTP 401 401: ...``); the other routes answer the current one.
"""

from __future__ import annotations

import re

import pytest

from zimage_dagster.api import AuthenticationError, GenerationRequest, ZImageClient
from zimage_dagster.emulator import EmulatorServer


def _no_repeated_status(text: str) -> None:
    """The status is said once before the ``(<method> <path>, request id ...)`` tail."""
    status = re.match(r"HTTP (\d{3}) ", text)
    assert status is not None, text
    assert text.rsplit(" (", 1)[0].count(status.group(1)) == 1, text


def test_401_on_credits_says_the_status_once(emulator: EmulatorServer) -> None:
    with (
        ZImageClient("wrong-key", base_url=emulator.url) as client,
        pytest.raises(AuthenticationError) as info,
    ):
        client.get_credits()
    text = str(info.value)
    assert text.startswith("HTTP 401 Unauthorized: "), text
    assert "(GET /v1/credits" in text, text
    _no_repeated_status(text)
    assert info.value.code == 401  # the attribute keeps the code as sent


def test_401_on_create_names_the_code(emulator: EmulatorServer) -> None:
    with (
        ZImageClient("wrong-key", base_url=emulator.url) as client,
        pytest.raises(AuthenticationError) as info,
    ):
        client.create_task(GenerationRequest(prompt="a fox", seed=1))
    text = str(info.value)
    assert text.startswith("HTTP 401 unauthorized: "), text
    _no_repeated_status(text)
    assert emulator.stats()["tasks_created"] == 0
