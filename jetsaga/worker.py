"""`jetsaga worker order|inventory|payment`: run one worker process."""

from __future__ import annotations

import argparse
import importlib

import uvloop

from jetsaga import config, gcpolicy, logs


def run(args: argparse.Namespace) -> int:
    settings = config.load()
    logs.configure(f"{args.service}-service", settings.log_level, settings.log_format)
    module = importlib.import_module(f"{args.service}_service.main")
    gcpolicy.tune()
    uvloop.run(module.main(settings))
    return 0
