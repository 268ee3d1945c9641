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
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from zimage_dagster.emulator.config import IMAGE_FORMATS, ConfigError, EmulatorConfig
from zimage_dagster.emulator.server import plan_origins
from zimage_dagster.emulator.tls import ThrowawayCA
from zimage_dagster.serving import KEEP_ALIVE_S, bind_socket, json_object_arg, socket_url


def _rate(text: str) -> tuple[str, float]:
    code, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected CODE=PROBABILITY, e.g. service_error=0.05")
    return code.strip(), float(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="zimage-emulator", description="A local stand-in for the Z-Image-Turbo API (EvoLink)."
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=0, help="port (0: a free one; the URL is printed first)"
    )
    p.add_argument(
        "--config",
        type=json_object_arg,
        default={},
        help="EmulatorConfig fields as a JSON object, or @file.json",
    )
    p.add_argument(
        "--latency", type=float, dest="latency_s", help="seconds from create to a terminal status"
    )
    p.add_argument(
        "--latency-range",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        dest="latency_range_s",
        help="random latency in [MIN, MAX]",
    )
    p.add_argument(
        "--pending-share",
        type=float,
        dest="pending_share",
        help="share of the latency spent pending (default 0.15)",
    )
    p.add_argument(
        "--seed", type=int, dest="random_seed", help="seed of the emulator's random draws"
    )
    p.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="an accepted key (repeatable; default: any sk- token)",
    )
    p.add_argument(
        "--failure-rate",
        type=_rate,
        action="append",
        dest="failure_rates",
        metavar="CODE=P",
        help="task failure rate per error code (repeatable)",
    )
    p.add_argument(
        "--ttl",
        type=float,
        dest="result_ttl_s",
        help="result link lifetime in seconds (default 86400)",
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
        "--image-format", choices=IMAGE_FORMATS, dest="image_format", help="default webp"
    )
    p.add_argument(
        "--concurrency-cap",
        type=int,
        dest="concurrency_cap",
        help="max non-terminal tasks before 429",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        dest="rate_limit_per_s",
        help="API requests per second before 429",
    )
    p.add_argument("--credits", type=float, dest="initial_credits", help="starting credit balance")
    p.add_argument(
        "--allow-loopback-callbacks",
        action="store_true",
        default=None,
        dest="allow_loopback_callbacks",
        help="accept http://127.0.0.1 callback URLs (tests only)",
    )
    p.add_argument(
        "--load-mode",
        action="store_true",
        default=None,
        dest="load_mode",
        help="load-test aid: serve every result from a few stock images per size (rendered once)",
    )
    p.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"zimage-emulator: {exc}", file=sys.stderr)
        return 2
    ca = ThrowawayCA().start() if args.tls else None
    try:
        origins = plan_origins(config, args.host, tls=args.tls, files_port=args.files_port)
        sock = bind_socket(args.host, args.port)
        print(socket_url(sock, scheme="https" if ca else "http"), flush=True)
        print(origins.files_url, flush=True)
        if ca is not None:
            print(ca.ca_path, flush=True)
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
        try:
            server.run(sockets=[sock, origins.files_socket])
        finally:
            sock.close()
            origins.files_socket.close()
    finally:
        if ca is not None:
            ca.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
