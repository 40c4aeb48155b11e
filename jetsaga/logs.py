"""Logging: one JSON object per line (or plain text with LOG_FORMAT=text).

Fields passed through `extra={...}` (orderId, subject, durable, deliveries, outcome) become
top-level keys of the JSON line. Callers never log payment methods or card data, and as a
second line of defence every formatted line is scrubbed of Stripe keys, payment method
tokens, client secrets and card numbers, whatever a message or an exception carries.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import msgspec

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_encoder = msgspec.json.Encoder(enc_hook=str)  # an odd extra is logged as text, not lost

_SECRET = re.compile(
    r"\b(?P<key>(?:sk|rk)_(?:test|live)_|whsec_)[0-9A-Za-z]+"
    r"|\b(?P<pm>pm_)[0-9A-Za-z_]+"
    r"|(?P<client>_secret_)[0-9A-Za-z]+"
    r"|(?<![\w-])(?P<card>\d(?:[ -]?\d){12,18})(?![\w-])"
)
# Cheap first looks, so that the usual line, with nothing to hide, is scanned quickly.
_MARKERS = ("sk_", "rk_", "whsec_", "pm_", "_secret_")
_DIGITS = re.compile(r"\d[\d -]{11,}\d")


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _scrub(match: re.Match[str]) -> str:
    card = match.group("card")
    if card is not None:
        digits = card.replace(" ", "").replace("-", "")
        return "[card]" if _luhn(digits) else card
    prefix = match.group("key") or match.group("pm") or match.group("client")
    return f"{prefix}[redacted]"


def redact(line: str) -> str:
    """`line` without secrets or card numbers (a card number is 13 to 19 digits that pass
    the Luhn check); JSON stays valid, as nothing quoted is inserted."""
    if not any(marker in line for marker in _MARKERS) and _DIGITS.search(line) is None:
        return line
    return _SECRET.sub(_scrub, line)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return redact(_encoder.encode(line).decode())


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        }
        return redact(base + "".join(f" {k}={v}" for k, v in extras.items()))


def configure(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "nats", "stripe"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
