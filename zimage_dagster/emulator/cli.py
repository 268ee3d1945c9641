"""`zimage-emulator`: run the emulator. It prints its API base URL on the first line of stdout,
the file origin's URL (where result links point) on the second and, with `--tls`, the path of
the throwaway CA certificate to trust on the third (`curl --cacert PATH`, httpx `verify=`).

    zimage-emulator --host 127.0.0.1 --port 0 --latency 2 --image-format png --tls

>>> config = build_config(parse_args(["--latency-range", "1", "3", "--failure-rate", "service_error=0.1"]))
>>> config.latency_range_s, config.failure_rates, config.load_mode
((1.0, 3.0), {'service_error': 0.1}, False)
>>> build_config(parse_args(["--load-mode"])).load_mode
True
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from zimage_dagster.emulator.config import IMAGE_FORMATS, ConfigError, EmulatorConfig
from zimage_dagster.emulator.server import plan_origins
from zimage_dagster.emulator.tls import ThrowawayCA
from zimage_dagster.serving import (
    KEEP_ALIVE_S,
    HelpFormatter,
    PortUnavailableError,
    bind_socket,
    json_object_arg,
    socket_url,
)


def _rate(text: str) -> tuple[str, float]:
    code, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected CODE=PROBABILITY, e.g. service_error=0.05")
    return code.strip(), float(value)


#: What ``--help`` ends with: one example, and what the output's lines are.
EPILOG = """\
example:
  zimage-emulator --port 8000 --latency 2
  export ZIMAGE_BASE_URL=http://127.0.0.1:8000 ZIMAGE_API_KEY=sk-emulator

stdout: the API base URL (line 1), the file origin's URL (line 2) and, with --tls,
the CA certificate to trust (line 3). Stop it with Ctrl-C or SIGTERM."""

_DEFAULTS = EmulatorConfig()


def _default(name: str) -> str:
    """``(default: X)`` of an ``EmulatorConfig`` field (the one home of the defaults)."""
    return f"(default: {getattr(_DEFAULTS, name)})"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="zimage-emulator",
        description="A local stand-in for the Z-Image-Turbo API (EvoLink).",
        formatter_class=HelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port", type=int, default=0, help="port (0: a free one; the URL is printed first)"
    )
    p.add_argument(
        "--config",
        type=json_object_arg,
        default={},
        help="EmulatorConfig fields as a JSON object, or @file.json; the options below win",
    )
    p.add_argument(
        "--latency",
        type=float,
        dest="latency_s",
        help=f"seconds from create to a terminal status {_default('latency_s')}",
    )
    p.add_argument(
        "--latency-range",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        dest="latency_range_s",
        help="random latency in [MIN, MAX] (default: none, --latency is used)",
    )
    p.add_argument(
        "--pending-share",
        type=float,
        dest="pending_share",
        help=f"share of the latency spent pending {_default('pending_share')}",
    )
    p.add_argument(
        "--seed",
        type=int,
        dest="random_seed",
        help=f"seed of the emulator's random draws {_default('random_seed')}",
    )
    p.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="an accepted key (repeatable) (default: any sk-... token)",
    )
    p.add_argument(
        "--failure-rate",
        type=_rate,
        action="append",
        dest="failure_rates",
        metavar="CODE=P",
        help="task failure rate per error code (repeatable) (default: none, no task fails)",
    )
    p.add_argument(
        "--ttl",
        type=float,
        dest="result_ttl_s",
        help=f"result link lifetime in seconds {_default('result_ttl_s')}",
    )
    p.add_argument(
        "--files-port", type=int, default=0, help="port of the file origin (0: a free one)"
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve both origins over https with a throwaway CA (its path is printed third)",
    )
    p.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        dest="image_format",
        help=f"format of the result images {_default('image_format')}",
    )
    p.add_argument(
        "--concurrency-cap",
        type=int,
        dest="concurrency_cap",
        help="max non-terminal tasks before 429 (default: no cap)",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        dest="rate_limit_per_s",
        help="API requests per second before 429 (default: no limit)",
    )
    p.add_argument(
        "--credits",
        type=float,
        dest="initial_credits",
        help=f"starting credit balance {_default('initial_credits')}",
    )
    p.add_argument(
        "--allow-loopback-callbacks",
        action="store_true",
        default=None,
        dest="allow_loopback_callbacks",
        help=f"accept http://127.0.0.1 callback URLs (tests only) {_default('allow_loopback_callbacks')}",
    )
    p.add_argument(
        "--load-mode",
        action="store_true",
        default=None,
        dest="load_mode",
        help="load-test aid: serve every result from a few stock images per size (rendered once) "
        f"{_default('load_mode')}",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level",
    )
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    """`--config` first, then the dedicated options on top of it."""
    changes: dict[str, Any] = dict(args.config)
    for name in (
        "latency_s", "latency_range_s", "pending_share", "random_seed", "api_keys", "result_ttl_s",
        "image_format", "concurrency_cap", "rate_limit_per_s", "initial_credits", "allow_loopback_callbacks",
        "load_mode",
    ):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.failure_rates:
        changes["failure_rates"] = dict(args.failure_rates)
    return EmulatorConfig.from_dict(changes)


class _Stopped(Exception):
    """SIGTERM arrived: stop as Ctrl-C does (the ``finally`` blocks run, the CA folder goes)."""


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until Ctrl-C or SIGTERM (then exit 0, its temporary files removed).

    A bad option or a port that cannot be listened on is one line on stderr and exit 2.
    """
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"zimage-emulator: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        _serve(args, config)
    except PortUnavailableError as exc:
        print(f"zimage-emulator: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _serve(args: argparse.Namespace, config: EmulatorConfig) -> None:
    """Bind both origins, print their URLs (and the CA's path) and serve until stopped."""
    ca = ThrowawayCA().start() if args.tls else None
    try:
        try:
            origins = plan_origins(config, args.host, tls=args.tls, files_port=args.files_port)
        except PortUnavailableError as exc:
            raise PortUnavailableError(exc.host, exc.port, exc.cause, "--files-port") from None
        try:
            sock = bind_socket(args.host, args.port)
        except PortUnavailableError:
            origins.files_socket.close()
            raise
        # Configured before the URLs are announced: a SIGTERM sent as soon as they are read must
        # not land inside uvicorn's logging set-up, which wraps any exception in a ValueError.
        server = uvicorn.Server(
            uvicorn.Config(
                origins.app,
                log_level=args.log_level,
                access_log=False,
                timeout_graceful_shutdown=2,
                timeout_keep_alive=KEEP_ALIVE_S,
                ssl_certfile=ca.cert_path if ca else None,
                ssl_keyfile=ca.key_path if ca else None,
            )
        )
        print(socket_url(sock, scheme="https" if ca else "http"), flush=True)
        print(origins.files_url, flush=True)
        if ca is not None:
            print(ca.ca_path, flush=True)
        try:
            server.run(sockets=[sock, origins.files_socket])
        finally:
            sock.close()
            origins.files_socket.close()
    finally:
        if ca is not None:
            ca.stop()


if __name__ == "__main__":
    sys.exit(main())
