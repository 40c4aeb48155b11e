"""The `jetsaga` command (SPEC §1): parses arguments and hands off to the module that owns
each subcommand. Modules are imported lazily so `jetsaga --help` stays instant."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from jetsaga import config

# subcommand -> module whose `run(args) -> int` carries it out
_COMMANDS = {
    "up": "jetsaga.devstack.up",
    "setup": "jetsaga.setup",
    "worker": "jetsaga.worker",
    "load": "jetsaga.load.runner",
    "dlq": "jetsaga.dlq",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jetsaga", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole system on this machine")
    up.add_argument("--no-seed", action="store_true", help="do not load the demo catalog")
    up.add_argument("--data-dir", default=".jetsaga", help="where embedded servers keep data")

    setup = sub.add_parser("setup", help="create or update streams and consumers")
    setup.add_argument("--replicas", type=int, default=None, help="stream replicas (NATS_REPLICAS)")

    worker = sub.add_parser("worker", help="run one worker process")
    worker.add_argument("service", choices=["order", "inventory", "payment"])

    load = sub.add_parser("load", help="the load test runner")
    load.add_argument("--url", default="http://127.0.0.1:3004")
    load.add_argument("--nats-url", default=None, help="watch final statuses here (NATS_URL)")
    load.add_argument("--inventory-url", default="http://127.0.0.1:3006")
    load.add_argument("--rate", type=float, default=100.0, help="orders per second")
    load.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    load.add_argument(
        "--warmup", type=float, default=0.0,
        help="seconds of sending at --rate before --duration; those orders are counted for"
        " loss and stock, not in throughput or latency",
    )  # fmt: skip
    load.add_argument("--decline-ratio", type=float, default=0.0)
    load.add_argument("--out-of-stock-ratio", type=float, default=0.0)
    load.add_argument("--settle-timeout", type=float, default=60.0)
    load.add_argument("--products", type=int, default=20, help="distinct products to use")
    load.add_argument("--json", dest="json_path", default=None, help="write the report here")
    load.add_argument("--chart", dest="chart_path", default=None, help="write a chart (.html)")
    load.add_argument("--no-progress", action="store_true")
    load.add_argument("--connections", type=int, default=None, help="HTTP pool (default: rate)")
    load.add_argument("--max-in-flight", type=int, default=10_000, help="cap on open POSTs")

    dlq = sub.add_parser("dlq", help="inspect and replay dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_sub.add_parser("list", help="list dead letters")
    show = dlq_sub.add_parser("show", help="show one dead letter")
    show.add_argument("id", type=int, help="sequence number in SAGA_ERRORS")
    replay = dlq_sub.add_parser("replay", help="re-publish dead letters")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=int, nargs="?", help="sequence number in SAGA_ERRORS")
    target.add_argument("--all", action="store_true", help="replay every dead letter")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(_COMMANDS[args.command])
    try:
        code: int = module.run(args)
    except config.ConfigError as exc:  # a bad environment variable, named in the message
        print(f"jetsaga {args.command}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
