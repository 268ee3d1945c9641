"""Callback URLs: every forbidden URL is refused by the client before any request is made (counted
both by a recording transport in front of the real one and by the emulator), in every IPv4
spelling (dotted, decimal, hex, octal, short, mixed), IPv6 (loopback, unique-local, link-local,
IPv4-mapped, NAT64), localhost names, plain http, userinfo tricks and over 2048 characters.
Ordinary https URLs are accepted and reach the provider.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from zimage_dagster.api import GenerationRequest, RequestValidationError, ZImageClient
from zimage_dagster.emulator.server import EmulatorProcess

FORBIDDEN = [
    # IPv4, dotted
    "https://127.0.0.1/hook",
    "https://127.255.255.254/hook",
    "https://10.0.0.5/hook",
    "https://172.16.0.1/hook",
    "https://172.31.255.255/hook",
    "https://192.168.1.1/hook",
    "https://169.254.169.254/latest/meta-data",
    "https://0.0.0.0/hook",
    "https://100.64.0.1/hook",
    "https://127.0.0.1:8443/hook",
    # decimal, hex, octal, short and mixed spellings
    "https://2130706433/hook",
    "https://167772165/hook",
    "https://3232235777/hook",
    "https://2852039166/hook",
    "https://0x7f000001/hook",
    "https://0x7F.0.0.1/hook",
    "https://0xa9fea9fe/hook",
    "https://0xC0.0xA8.1.1/hook",
    "https://0177.0.0.1/hook",
    "https://012.0.0.5/hook",
    "https://0300.0250.01.01/hook",
    "https://127.1/hook",
    "https://10.1/hook",
    "https://0x7f.1/hook",
    "https://127.0.0.1./hook",
    # IPv6
    "https://[::1]/hook",
    "https://[0:0:0:0:0:0:0:1]/hook",
    "https://[::]/hook",
    "https://[fc00::1]/hook",
    "https://[fd12:3456:789a::1]/hook",
    "https://[fe80::1]/hook",
    "https://[fe80::1%25eth0]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[::ffff:169.254.169.254]/hook",
    "https://[64:ff9b::7f00:1]/hook",
    "https://[::127.0.0.1]/hook",
    # names
    "https://localhost/hook",
    "https://LOCALHOST/hook",
    "https://localhost./hook",
    "https://api.localhost/hook",
    "https://printer.local/hook",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://router.home.arpa/hook",
    "https://host.localdomain/hook",
    # scheme, credentials, length, garbage
    "http://hooks.example.com/zimage",
    "HTTP://hooks.example.com/zimage",
    "ftp://hooks.example.com/zimage",
    "file:///etc/passwd",
    "https://hooks.example.com@127.0.0.1/hook",
    "https://user:pass@hooks.example.com/hook",
    "https://hooks.example.com/" + "a" * 2030,
    "https:///hook",
    "https://hooks example.com/hook",
    "https://hooks.example.com/\r\nX-Injected: 1",
    "",
]

ACCEPTED = [
    "https://hooks.example.com/zimage",
    "https://hooks.example.com:8443/cb?token=abc&run=1",
    "https://8.8.8.8/hook",
    "https://[2001:4860:4860::8888]/hook",
    "https://xn--bcher-kva.example/hook",
    "https://hooks.example.com/" + "a" * (2048 - len("https://hooks.example.com/")),
]


class RecordingTransport(httpx.HTTPTransport):
    """The real transport (to the emulator on loopback), recording every request it sends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


def _refused(client: ZImageClient, url: str) -> None:
    with pytest.raises((ValidationError, RequestValidationError)) as caught:
        GenerationRequest(prompt="a fox", seed=1, size="376x376", callback_url=url)
    assert "callback_url" in str(caught.value)
    # A request built without validation is checked again before it is sent.
    unchecked = GenerationRequest.model_construct(
        model="z-image-turbo", prompt="a fox", size="376x376", seed=1, nsfw_check=False,
        callback_url=url,
    )  # fmt: skip
    with pytest.raises(RequestValidationError) as again:
        client.create_task(unchecked)
    assert again.value.field == "callback_url"


def test_forbidden_callback_urls_never_leave_the_client(emulator_proc: EmulatorProcess) -> None:
    transport = RecordingTransport()
    with ZImageClient(
        api_key=emulator_proc.api_key, base_url=emulator_proc.url, transport=transport
    ) as client:
        for url in FORBIDDEN:
            _refused(client, url)
        assert transport.sent == []
        assert emulator_proc.stats()["requests_total"] == 0

        for url in ACCEPTED:
            task = client.create_task(
                GenerationRequest(prompt="a fox", seed=1, size="376x376", callback_url=url)
            )
            assert task.id.startswith("task-unified-")
    assert len(transport.sent) == len(ACCEPTED)
    stats = emulator_proc.stats()
    assert stats["tasks_created"] == len(ACCEPTED)
    assert stats["callbacks_sent"] == 0  # external callbacks are never sent off this machine
    assert [t["request"]["callback_url"] for t in emulator_proc.tasks()] == ACCEPTED


_PRIVATE_V4 = [
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
    )
]


@st.composite
def internal_ipv4_spellings(draw: st.DrawFn) -> str:
    net = draw(st.sampled_from(_PRIVATE_V4))
    value = int(net.network_address) + draw(st.integers(0, net.num_addresses - 1))
    octets = list(ipaddress.IPv4Address(value).packed)
    style = draw(st.sampled_from(["dotted", "decimal", "hex", "octal", "mixed", "short", "v6"]))
    if style == "decimal":
        host = str(value)
    elif style == "hex":
        host = hex(value)
    elif style == "v6":
        host = f"[::ffff:{ipaddress.IPv4Address(value)}]"
    elif style == "short":  # a.b.c where c holds the last 16 bits
        host = f"{octets[0]}.{octets[1]}.{octets[2] * 256 + octets[3]}"
    else:
        parts = []
        for octet in octets:
            form = style if style != "mixed" else draw(st.sampled_from(["dotted", "hex", "octal"]))
            parts.append(
                hex(octet) if form == "hex" else f"0{octet:o}" if form == "octal" else str(octet)
            )
        host = ".".join(parts)
    port = draw(st.sampled_from(["", ":443", ":8443"]))
    return f"https://{host}{port}/hook"


@pytest.fixture(scope="module")
def recording_client(
    emulator_proc_session: EmulatorProcess,
) -> Iterator[tuple[ZImageClient, RecordingTransport]]:
    transport = RecordingTransport()
    with ZImageClient(
        api_key=emulator_proc_session.api_key,
        base_url=emulator_proc_session.url,
        transport=transport,
    ) as client:
        yield client, transport


@settings(max_examples=300, deadline=None)
@given(url=internal_ipv4_spellings())
def test_any_spelling_of_an_internal_ipv4_address_is_refused_offline(
    url: str, recording_client: tuple[ZImageClient, RecordingTransport]
) -> None:
    client, transport = recording_client
    _refused(client, url)
    assert transport.sent == []
