"""The provider's documented request rules, as plain functions.

Each function returns the accepted value or raises :class:`RequestValidationError` naming the
field and the problem. The pydantic models use the same functions, so the rules live in one place.

>>> validate_size("1024x768")
'1024x768'
>>> parse_size("1024x768"), parse_size("16:9")
((1024, 768), None)
>>> validate_seed(True)
Traceback (most recent call last):
...
zimage_dagster.api.errors.RequestValidationError: seed: must be an integer, not bool (got True)
"""

from __future__ import annotations

import ipaddress
import numbers
import re
from urllib.parse import urlsplit

from zimage_dagster.api.errors import RequestValidationError

__all__ = [
    "DEFAULT_SIZE",
    "MAX_CALLBACK_URL_LENGTH",
    "MAX_PROMPT_LENGTH",
    "MAX_SEED",
    "MAX_SIDE",
    "MIN_SEED",
    "MIN_SIDE",
    "MODEL",
    "SUPPORTED_RATIOS",
    "is_internal_host",
    "parse_ipv4_any",
    "parse_size",
    "redact_url",
    "validate_callback_url",
    "validate_prompt",
    "validate_seed",
    "validate_size",
]

MODEL = "z-image-turbo"
MAX_PROMPT_LENGTH = 2000
SUPPORTED_RATIOS: tuple[str, ...] = (
    "1:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "9:16",
    "16:9",
    "1:2",
    "2:1",
)
#: The size the API uses when none is sent (the client always sends one).
DEFAULT_SIZE = "1:1"
MIN_SIDE = 376
MAX_SIDE = 1536
MIN_SEED = 1
MAX_SEED = 2_147_483_647
MAX_CALLBACK_URL_LENGTH = 2048

_WXH = re.compile(r"([1-9][0-9]{0,8})x([1-9][0-9]{0,8})")
_SIZE_RULE = (
    f"must be one of {' '.join(SUPPORTED_RATIOS)} or WxH (e.g. 1024x768) "
    f"with each side in {MIN_SIDE}..{MAX_SIDE}"
)


def validate_prompt(prompt: object) -> str:
    """A non-empty (after stripping whitespace) string of at most 2000 characters.

    The prompt is returned unchanged (not stripped).

    >>> validate_prompt("a cute cat")
    'a cute cat'
    >>> validate_prompt("   ")
    Traceback (most recent call last):
    ...
    zimage_dagster.api.errors.RequestValidationError: prompt: must not be empty or only whitespace (got '   ')
    >>> validate_prompt("a cat \\ud83d")
    Traceback (most recent call last):
    ...
    zimage_dagster.api.errors.RequestValidationError: prompt: has a lone surrogate (U+D83D) at index 6: not valid Unicode text (was an emoji cut in half?) (got 'a cat \\ud83d')
    """
    if not isinstance(prompt, str):
        raise RequestValidationError(
            "prompt", prompt, f"must be a string, not {type(prompt).__name__}"
        )
    if not prompt.strip():
        raise RequestValidationError("prompt", prompt, "must not be empty or only whitespace")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:  # e.g. half of an emoji, from a badly cut string
        char = f"U+{ord(prompt[exc.start]):04X}"
        raise RequestValidationError(
            "prompt",
            prompt,
            f"has a lone surrogate ({char}) at index {exc.start}: not valid Unicode text "
            "(was an emoji cut in half?)",
        ) from None
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise RequestValidationError(
            "prompt",
            prompt,
            f"is {len(prompt)} characters long; the limit is {MAX_PROMPT_LENGTH}",
        )
    return prompt


def parse_size(size: object) -> tuple[int, int] | None:
    """``(width, height)`` for a ``WxH`` size, ``None`` for a supported ratio; raises otherwise.

    >>> parse_size("376x1536")
    (376, 1536)
    >>> parse_size("1:1") is None
    True
    """
    if not isinstance(size, str):
        raise RequestValidationError("size", size, f"must be a string, not {type(size).__name__}")
    if size in SUPPORTED_RATIOS:
        return None
    match = _WXH.fullmatch(size)
    if match is None:
        if ":" in size:
            raise RequestValidationError("size", size, f"is not a supported ratio; {_SIZE_RULE}")
        raise RequestValidationError("size", size, _SIZE_RULE)
    width, height = int(match.group(1)), int(match.group(2))
    for name, side in (("width", width), ("height", height)):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise RequestValidationError(
                "size", size, f"{name} {side} is outside {MIN_SIDE}..{MAX_SIDE}"
            )
    return width, height


def validate_size(size: object) -> str:
    """A supported ratio (``1:1 2:3 3:2 3:4 4:3 9:16 16:9 1:2 2:1``) or ``WxH`` with sides in 376..1536.

    >>> validate_size("16:9")
    '16:9'
    >>> validate_size("100x100")
    Traceback (most recent call last):
    ...
    zimage_dagster.api.errors.RequestValidationError: size: width 100 is outside 376..1536 (got '100x100')
    """
    parse_size(size)
    assert isinstance(size, str)  # parse_size refused anything else
    return size


def validate_seed(seed: object) -> int | None:
    """``None`` (the client then draws one) or an integer in 1..2147483647; bools and floats are refused.

    >>> validate_seed(42), validate_seed(None)
    (42, None)
    >>> validate_seed(4.0)
    Traceback (most recent call last):
    ...
    zimage_dagster.api.errors.RequestValidationError: seed: must be an integer, not float (got 4.0)
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise RequestValidationError("seed", seed, f"must be an integer, not {type(seed).__name__}")
    value = int(seed)
    if not MIN_SEED <= value <= MAX_SEED:
        raise RequestValidationError("seed", seed, f"must be in {MIN_SEED}..{MAX_SEED}")
    return value


# --- callback URLs ------------------------------------------------------------------------

_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
_HOST_CHARS = re.compile(r"[a-z0-9._-]+")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPAT = ipaddress.ip_network("::/96")


def parse_ipv4_any(host: str) -> ipaddress.IPv4Address | None:
    """Parse an IPv4 address in any spelling ``inet_aton`` (and browsers) accept.

    Dotted, decimal (``2130706433``), hex (``0x7f000001``, ``0x7f.0.0.1``), octal (``0177.0.0.1``)
    and short forms (``127.1``). Returns ``None`` when ``host`` is not numeric at all; raises
    ``ValueError`` when it looks numeric but is not a valid address.

    >>> str(parse_ipv4_any("0x7f.1")), str(parse_ipv4_any("2130706433")), parse_ipv4_any("example.com")
    ('127.0.0.1', '127.0.0.1', None)
    """
    labels = host.lower().split(".")
    if labels and labels[-1] == "":
        labels = labels[:-1]
    if not labels or not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None
    if len(labels) > 4:
        raise ValueError("too many parts for an IPv4 address")
    numbers_: list[int] = []
    for label in labels:
        if not _NUMERIC_LABEL.fullmatch(label):
            raise ValueError(f"{label!r} is not a number")
        if label.startswith("0x"):
            numbers_.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if any(c in "89" for c in label):
                raise ValueError(f"{label!r} is not an octal number")
            numbers_.append(int(label, 8))
        else:
            numbers_.append(int(label))
    *head, last = numbers_
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers_)):
        raise ValueError("a part is out of range")
    value = 0
    for n in head:
        value = value * 256 + n
    value = value * 256 ** (5 - len(numbers_)) + last
    return ipaddress.IPv4Address(value)


def _ip_is_internal(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(addr, ipaddress.IPv6Address):
        embedded: list[ipaddress.IPv4Address] = []
        if addr.ipv4_mapped is not None:
            embedded.append(addr.ipv4_mapped)
        if addr.sixtofour is not None:
            embedded.append(addr.sixtofour)
        if addr.teredo is not None:
            embedded.extend(addr.teredo)
        if any(addr in net for net in _NAT64) or addr in _IPV4_COMPAT:
            embedded.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
        if any(_ip_is_internal(v4) for v4 in embedded):
            return True
        if addr.is_site_local:
            return True
    return bool(
        not addr.is_global
        or addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_unspecified
        or addr.is_reserved
        or addr.is_multicast
    )


def is_internal_host(host: str) -> bool:
    """Whether ``host`` (as found in a URL) names an internal, or unusable, address.

    Loopback, private, link-local, unspecified, reserved, multicast and CGNAT (100.64/10)
    addresses in any IPv4 spelling; IPv6 (bracketed or not) including IPv4-mapped, 6to4, Teredo,
    NAT64, unique-local fc00::/7, link-local fe80::/10 and site-local; ``localhost`` and names under
    ``.localhost``, ``.local``, ``.internal``, ``.localdomain``, ``.home.arpa``. Names this cannot
    judge without DNS (e.g. a public name that resolves to 127.0.0.1) count as external.

    >>> [is_internal_host(h) for h in ("127.1", "[::ffff:127.0.0.1]", "LOCALHOST.", "example.com")]
    [True, True, True, False]
    """
    h = host.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            return _ip_is_internal(ipaddress.IPv6Address(h))
        except ValueError:
            return True  # unparseable or zone-scoped (fe80::1%eth0): refuse
    h = h.rstrip(".")
    if not h or not _HOST_CHARS.fullmatch(h):
        return True
    if h == "localhost" or h.endswith(_INTERNAL_SUFFIXES):
        return True
    try:
        v4 = parse_ipv4_any(h)
    except ValueError:
        return True  # numeric but not a valid address: no public host looks like this
    if v4 is not None:
        return _ip_is_internal(v4)
    return False


def validate_callback_url(url: object) -> str | None:
    """``None``, or an ``https`` URL of at most 2048 characters whose host is not internal.

    Userinfo (``user@host``) is refused outright: parsers disagree about it, which makes it a
    classic way to smuggle an internal host past a check. An error shows the URL without its
    path, query and credentials (:func:`redact_url`): a callback URL carries a secret token.

    >>> validate_callback_url("https://hooks.example.com/zimage")
    'https://hooks.example.com/zimage'
    >>> validate_callback_url("https://good.com@127.0.0.1/")
    Traceback (most recent call last):
    ...
    zimage_dagster.api.errors.RequestValidationError: callback_url: must not contain credentials (user@host) (got 'https://127.0.0.1/...')
    """
    if url is None:
        return None
    field = "callback_url"
    if not isinstance(url, str):
        raise RequestValidationError(field, "...", f"must be a string, not {type(url).__name__}")
    shown = redact_url(url)
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        raise RequestValidationError(
            field, shown, f"is {len(url)} characters long; the limit is {MAX_CALLBACK_URL_LENGTH}"
        )
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise RequestValidationError(
            field, shown, "must not contain whitespace, control characters or backslashes"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RequestValidationError(field, shown, f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() != "https":
        raise RequestValidationError(field, shown, "must use https")
    if "@" in parts.netloc:
        raise RequestValidationError(field, shown, "must not contain credentials (user@host)")
    host = parts.netloc
    if port is not None or host.endswith(":"):
        host = host.rsplit(":", 1)[0]
    if not host:
        raise RequestValidationError(field, shown, "has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise RequestValidationError(
                field, shown, "has a host name that is not valid IDNA"
            ) from None
    if is_internal_host(host):
        raise RequestValidationError(
            field, shown, f"host {host!r} is an internal, loopback or otherwise non-public address"
        )
    return url


def redact_url(url: str) -> str:
    """``scheme://host[:port]/...``: what an error may show of a URL that may hold a secret in
    its path, query or credentials.

    >>> redact_url("http://user:pw@hooks.example.com:8443/callbacks/SECRET?k=v")
    'http://hooks.example.com:8443/...'
    >>> redact_url("not a url at all")
    '<URL not shown>'
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "<URL not shown>"
    if not parts.scheme or not host:
        return "<URL not shown>"
    return f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}/..."
