"""The documented request rules: plain functions, the request model, property-based checks."""

from __future__ import annotations

import ipaddress
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from zimage_dagster.api import (
    MAX_PROMPT_LENGTH,
    MAX_SEED,
    MAX_SIDE,
    MIN_SEED,
    MIN_SIDE,
    SUPPORTED_RATIOS,
    GenerationRequest,
    RequestValidationError,
    ZImageError,
    is_internal_host,
    parse_size,
    validate_callback_url,
    validate_prompt,
    validate_seed,
    validate_size,
)
from zimage_dagster.api.validation import parse_ipv4_any

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- RequestValidationError -------------------------------------------------------------------


def test_request_validation_error_is_zimage_error_and_value_error() -> None:
    err = RequestValidationError("size", "7x7", "bad")
    assert isinstance(err, ZImageError)
    assert isinstance(err, ValueError)
    assert (err.field, err.value, err.reason) == ("size", "7x7", "bad")
    assert str(err) == "size: bad (got '7x7')"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


def test_long_values_are_truncated_in_messages() -> None:
    with pytest.raises(RequestValidationError) as info:
        validate_prompt("x" * 5000)
    text = str(info.value)
    assert text.startswith("prompt: is 5000 characters long; the limit is 2000")
    assert len(text) < 200
    assert "(5000 characters)" in text


# --- prompt -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt", ["a", "a cute cat", "x" * MAX_PROMPT_LENGTH, "  padded  ", "猫" * 2000]
)
def test_prompt_accepted(prompt: str) -> None:
    assert validate_prompt(prompt) == prompt


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("", "empty"),
        ("   \n\t ", "empty"),
        ("x" * (MAX_PROMPT_LENGTH + 1), "2001 characters"),
        (None, "must be a string"),
        (42, "must be a string"),
    ],
)
def test_prompt_rejected(prompt: object, reason: str) -> None:
    with pytest.raises(RequestValidationError, match=reason) as info:
        validate_prompt(prompt)
    assert info.value.field == "prompt"
    assert str(info.value).startswith("prompt: ")


# --- size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", SUPPORTED_RATIOS)
def test_every_ratio_accepted(ratio: str) -> None:
    assert validate_size(ratio) == ratio
    assert parse_size(ratio) is None


@given(st.integers(MIN_SIDE, MAX_SIDE), st.integers(MIN_SIDE, MAX_SIDE))
@FAST
def test_every_in_range_wxh_accepted(w: int, h: int) -> None:
    assert validate_size(f"{w}x{h}") == f"{w}x{h}"
    assert parse_size(f"{w}x{h}") == (w, h)


out_of_range = st.one_of(st.integers(1, MIN_SIDE - 1), st.integers(MAX_SIDE + 1, 10**8))


@given(
    st.one_of(
        st.tuples(out_of_range, st.integers(MIN_SIDE, MAX_SIDE)),
        st.tuples(st.integers(MIN_SIDE, MAX_SIDE), out_of_range),
        st.tuples(out_of_range, out_of_range),
    )
)
@FAST
def test_every_out_of_range_wxh_rejected_naming_size(sides: tuple[int, int]) -> None:
    w, h = sides
    with pytest.raises(RequestValidationError) as info:
        validate_size(f"{w}x{h}")
    assert info.value.field == "size"
    assert str(info.value).startswith("size: ")
    assert f"outside {MIN_SIDE}..{MAX_SIDE}" in str(info.value)


@given(st.text(max_size=20).filter(lambda s: s not in SUPPORTED_RATIOS))
@FAST
def test_arbitrary_text_is_a_size_only_if_well_formed(text: str) -> None:
    field: str | None
    try:
        dims = parse_size(text)
    except RequestValidationError as exc:
        field = exc.field
        dims = None
    else:
        field = None
    if dims is None:
        assert field == "size"
        return
    assert text == f"{dims[0]}x{dims[1]}"


@pytest.mark.parametrize(
    "size",
    [
        "",
        "1:3",
        "5:4",
        "16:10",
        "1024",
        "1024*768",
        "1024X768",
        " 1024x768",
        "1024x768 ",
        "0512x512",
        "-512x512",
        "512.0x512",
        "1024x",
        "x768",
        "1:1 ",
        "square",
    ],
)
def test_malformed_sizes_rejected(size: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        validate_size(size)
    assert str(info.value).startswith("size: ")


def test_size_non_string_rejected() -> None:
    with pytest.raises(RequestValidationError, match="size: must be a string"):
        validate_size((1024, 768))


# --- seed ---------------------------------------------------------------------------------------


@given(st.integers(MIN_SEED, MAX_SEED))
@FAST
def test_every_seed_in_range_accepted(seed: int) -> None:
    assert validate_seed(seed) == seed


@given(st.one_of(st.integers(max_value=MIN_SEED - 1), st.integers(min_value=MAX_SEED + 1)))
@FAST
def test_every_seed_out_of_range_rejected(seed: int) -> None:
    with pytest.raises(RequestValidationError, match=r"^seed: must be in 1\.\.2147483647"):
        validate_seed(seed)


@given(st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=5), st.decimals()))
@FAST
def test_seed_non_integers_rejected(seed: object) -> None:
    with pytest.raises(RequestValidationError, match=r"^seed: must be an integer"):
        validate_seed(seed)


def test_seed_none_means_draw_one() -> None:
    assert validate_seed(None) is None


# --- callback URL -------------------------------------------------------------------------------

INTERNAL_URLS = [
    "https://127.0.0.1/hook",
    "https://127.1/hook",
    "https://127.0.1/",
    "https://2130706433/",
    "https://0x7f000001/",
    "https://0x7f.0.0.1/",
    "https://0x7F.0x0.0x0.0x1/",
    "https://0177.0.0.1/",
    "https://0177.1/",
    "https://017700000001/",
    "https://127.0.0.1./",
    "https://10.0.0.1/",
    "https://10.255.255.255:8443/x",
    "https://172.16.0.1/",
    "https://172.31.255.254/",
    "https://192.168.1.1/",
    "https://169.254.169.254/latest/meta-data/",
    "https://0.0.0.0/",
    "https://0/",
    "https://100.64.0.1/",
    "https://100.127.255.254/",
    "https://224.0.0.1/",
    "https://239.255.255.250/",
    "https://240.0.0.1/",
    "https://255.255.255.255/",
    "https://[::1]/",
    "https://[::1]:8443/",
    "https://[0:0:0:0:0:0:0:1]/",
    "https://[::]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/",
    "https://[::ffff:10.0.0.1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[fc00::1]/",
    "https://[fd12:3456:789a::1]/",
    "https://[fe80::1]/",
    "https://[fe80::1%25eth0]/",
    "https://[febf::1]/",
    "https://[fec0::1]/",
    "https://[ff02::1]/",
    "https://[2002:7f00:1::]/",
    "https://[64:ff9b::7f00:1]/",
    "https://[::127.0.0.1]/",
    "https://localhost/",
    "https://LOCALHOST/",
    "https://localhost./",
    "https://localhost:8443/",
    "https://api.localhost/",
    "https://a.b.localhost./",
    "https://printer.local/",
    "https://metadata.google.internal/",
    "https://good.com@127.0.0.1/",
    "https://user:pass@example.com/",
    "https://@example.com/",
    "https://127.0.0.1%2f@example.com/",
    "https://%31%32%37.0.0.1/",
    "https://1.2.3.999/",
    "https://example.123/",
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_internal_callback_urls_rejected(url: str) -> None:
    with pytest.raises(RequestValidationError) as info:
        validate_callback_url(url)
    assert info.value.field == "callback_url"
    assert str(info.value).startswith("callback_url: ")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/hook", "must use https"),
        ("ftp://example.com/hook", "must use https"),
        ("//example.com/hook", "must use https"),
        ("example.com/hook", "must use https"),
        ("https:///path", "has no host"),
        ("https://example.com/" + "a" * 2048, "the limit is 2048"),
        ("https://exa mple.com/", "whitespace"),
        ("https://example.com\\@127.0.0.1/", "backslash"),
        ("https://[::1/", "not a valid URL"),
        ("https://example.com:99999/", "not a valid URL"),
        (12, "must be a string"),
    ],
)
def test_bad_callback_urls_rejected_with_reason(url: object, reason: str) -> None:
    with pytest.raises(RequestValidationError, match=reason):
        validate_callback_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/zimage",
        "https://EXAMPLE.com:8443/a/b?c=d#e",
        "https://8.8.8.8/hook",
        "https://[2001:4860:4860::8888]/hook",
        "https://xn--bcher-kva.example/",
        "https://bücher.example/",
        "https://a-b.c-d.example.org./x",
        "https://localhost.example.com/",
        "https://0x7f.example.com/",
        "https://1.2.3.4.example.com/",
        None,
    ],
)
def test_public_callback_urls_accepted(url: str | None) -> None:
    assert validate_callback_url(url) == url


def _ipv4_spellings(addr: ipaddress.IPv4Address) -> list[str]:
    n = int(addr)
    a, b, c, d = addr.packed
    return [
        str(addr),
        str(n),
        hex(n),
        f"0x{a:02x}.0x{b:02x}.0x{c:02x}.0x{d:02x}",
        f"0{a:o}.0{b:o}.0{c:o}.0{d:o}",
        f"{a}.{b}.{(c << 8) | d}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"0x{a:x}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{c}.{d}.",
        f"[::ffff:{addr}]",
        f"[::ffff:{a * 256 + b:x}:{c * 256 + d:x}]",
    ]


INTERNAL_V4_NETS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
]


@st.composite
def internal_ipv4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    net = ipaddress.IPv4Network(draw(st.sampled_from(INTERNAL_V4_NETS)))
    offset = draw(st.integers(0, net.num_addresses - 1))
    return net[offset]


@given(internal_ipv4(), st.data())
@FAST
def test_every_internal_ipv4_rejected_in_every_spelling(
    addr: ipaddress.IPv4Address, data: st.DataObject
) -> None:
    for host in _ipv4_spellings(addr):
        assert is_internal_host(host), host
        port = data.draw(st.sampled_from(["", ":443", ":8443"]))
        with pytest.raises(RequestValidationError, match=r"^callback_url: "):
            validate_callback_url(f"https://{host}{port}/cb")


@given(st.integers(0, 2**32 - 1))
@FAST
def test_ipv4_parser_agrees_with_ipaddress_for_every_spelling(n: int) -> None:
    addr = ipaddress.IPv4Address(n)
    for host in _ipv4_spellings(addr)[:9]:
        assert parse_ipv4_any(host) == addr, host


@given(st.integers(0, 2**128 - 1))
@FAST
def test_ipv6_unique_local_and_link_local_rejected(n: int) -> None:
    for net in ("fc00::/7", "fe80::/10"):
        network = ipaddress.IPv6Network(net)
        addr = network[n % network.num_addresses]
        with pytest.raises(RequestValidationError):
            validate_callback_url(f"https://[{addr}]/cb")


label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12).filter(
    lambda s: s not in {"localhost", "local", "internal", "localdomain"}
)
tld = st.sampled_from(["com", "org", "net", "io", "dev", "ai", "example"])
path = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_/.", max_size=40)


@given(st.lists(label, min_size=1, max_size=3), tld, path, st.sampled_from(["", ":443", ":8443"]))
@FAST
def test_random_public_https_urls_accepted(labels: list[str], top: str, p: str, port: str) -> None:
    url = f"https://{'.'.join(labels)}.{top}{port}/{p}"
    assert validate_callback_url(url) == url


@given(st.integers(0, 2**32 - 1))
@FAST
def test_public_ipv4_accepted_private_refused_consistently(n: int) -> None:
    addr = ipaddress.IPv4Address(n)
    public = addr.is_global and not addr.is_multicast and not addr.is_reserved
    assert is_internal_host(str(addr)) is not public


# --- the request model --------------------------------------------------------------------------


def test_request_defaults_and_wire_shape() -> None:
    req = GenerationRequest(prompt="a cute cat")
    assert req.model == "z-image-turbo"
    assert req.size == "1:1"
    assert req.seed is None
    assert req.nsfw_check is False
    assert req.to_wire() == {
        "model": "z-image-turbo",
        "prompt": "a cute cat",
        "size": "1:1",
        "nsfw_check": False,
    }
    assert req.dimensions() is None
    assert GenerationRequest(prompt="x", size="1536x376").dimensions() == (1536, 376)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "ok", "size": "4:5"}, "size"),
        ({"prompt": "ok", "size": "2000x100"}, "size"),
        ({"prompt": "ok", "seed": 0}, "seed"),
        ({"prompt": "ok", "seed": True}, "seed"),
        ({"prompt": "ok", "seed": 12.0}, "seed"),
        ({"prompt": "ok", "seed": "12"}, "seed"),
        ({"prompt": "ok", "callback_url": "https://10.0.0.1/"}, "callback_url"),
        ({"prompt": "ok", "nsfw_check": "yes"}, "nsfw_check"),
        ({"prompt": "ok", "model": "other"}, "model"),
        ({"prompt": "ok", "n": 2}, "n"),
    ],
)
def test_request_model_applies_the_rules(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        GenerationRequest(**kwargs)
    assert info.value.errors()[0]["loc"] == (field,)
    assert field in str(info.value)


def test_request_model_is_frozen() -> None:
    req = GenerationRequest(prompt="x", seed=5)
    with pytest.raises(ValidationError):
        req.seed = 6  # type: ignore[misc]
    assert req.model_copy(update={"seed": 6}).seed == 6
