"""Log lines: one JSON object per line by default, text with LOG_FORMAT=text, the handling
fields at top level, and never a secret or card number, whatever a caller passes."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from jetsaga import logs

HANDLED = {
    "orderId": "o-1",
    "subject": "orders.created",
    "durable": "inventory-service",
    "deliveries": 2,
    "outcome": "acked",
}


def record(
    msg: str, *args: object, level: int = logging.INFO, **extra: object
) -> logging.LogRecord:
    made = logging.makeLogRecord(
        {
            "name": "jetsaga.consumer",
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "msg": msg,
            "args": args or None,
        }
    )
    made.__dict__.update(extra)
    return made


def as_json(made: logging.LogRecord) -> dict[str, object]:
    line = logs.JsonFormatter("inventory-service").format(made)
    assert "\n" not in line
    parsed: dict[str, object] = json.loads(line)
    return parsed


def test_a_json_line_carries_the_handling_fields_at_top_level() -> None:
    line = as_json(record("handled", level=logging.DEBUG, **HANDLED))
    assert line["level"] == "debug" and line["msg"] == "handled"
    assert line["service"] == "inventory-service" and line["logger"] == "jetsaga.consumer"
    assert {k: line[k] for k in HANDLED} == HANDLED
    assert str(line["ts"]).endswith("Z")


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    line = as_json(made)
    assert "RuntimeError: boom" in str(line["exc"])


def test_a_value_json_cannot_hold_is_logged_as_text() -> None:
    line = as_json(record("odd", error=ValueError("bad"), when=object))
    assert line["error"] == "bad" and "object" in str(line["when"])


def test_text_lines_end_with_the_fields_as_key_value_pairs() -> None:
    line = logs.TextFormatter("order-service").format(record("handled %s", "ok", **HANDLED))
    assert " INFO order-service jetsaga.consumer: handled ok" in line
    assert line.endswith(
        " orderId=o-1 subject=orders.created durable=inventory-service deliveries=2 outcome=acked"
    )


SECRETS = [
    ("sk_test_4eC39HqLyjWDarjtT1zdp7dc", "sk_test_[redacted]"),
    ("rk_live_51H0abcDEF", "rk_live_[redacted]"),
    ("whsec_abc123", "whsec_[redacted]"),
    ("pm_card_chargeCustomerFail", "pm_[redacted]"),
    ("pm_1NqjZ2LkdIwHu7ix", "pm_[redacted]"),
    ("pi_3Mtw_secret_YrKJUKribcBjcG8HVhfZluoGH", "pi_3Mtw_secret_[redacted]"),
    ("4242424242424242", "[card]"),
    ("4000 0000 0000 0002", "[card]"),
    ("5555-5555-5555-4444", "[card]"),
]


@pytest.mark.parametrize(("secret", "shown"), SECRETS)
def test_secrets_and_card_numbers_never_reach_a_json_line(secret: str, shown: str) -> None:
    made = record(f"gateway said {secret}!", paymentMethod=secret, error=f"no such {secret}")
    line = logs.JsonFormatter("payment-service").format(made)
    assert secret not in line
    parsed = json.loads(line)
    assert parsed["msg"] == f"gateway said {shown}!"
    assert parsed["paymentMethod"] == shown and parsed["error"] == f"no such {shown}"


@pytest.mark.parametrize(("secret", "shown"), SECRETS)
def test_secrets_and_card_numbers_never_reach_a_text_line(secret: str, shown: str) -> None:
    line = logs.TextFormatter("payment-service").format(record("x", key=secret))
    assert secret not in line and line.endswith(f" key={shown}")


def test_a_secret_inside_a_traceback_is_redacted() -> None:
    try:
        raise ValueError("No such PaymentMethod: 'pm_card_visa' (key sk_test_abc)")
    except ValueError:
        made = record("failed")
        made.exc_info = sys.exc_info()
    line = logs.JsonFormatter("payment-service").format(made)
    assert "pm_card" not in line and "sk_test_abc" not in line
    assert "pm_[redacted]" in json.loads(line)["exc"]


@pytest.mark.parametrize(
    "kept",
    [
        "1234567890123",  # 13 digits that fail the Luhn check: an id, not a card
        "pi_3MtwBwLkdIwHu7ix28a3tqPa",  # payment intent ids are not secrets
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "2026-11-22T06:18:39.812Z",
        "deliveries=3 payment_method=card",
    ],
)
def test_ids_timestamps_and_trace_context_are_kept(kept: str) -> None:
    assert logs.redact(f"x {kept} y") == f"x {kept} y"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("fmt", "kind"), [("json", logs.JsonFormatter), ("text", logs.TextFormatter)]
)
def test_configure_picks_the_format_and_level(
    root_logger: logging.Logger, fmt: str, kind: type[logging.Formatter]
) -> None:
    logs.configure("order-service", "debug", fmt)
    (handler,) = root_logger.handlers
    assert isinstance(handler.formatter, kind)
    assert root_logger.level == logging.DEBUG
    assert logging.getLogger("stripe").level == logging.WARNING  # its request logs stay out


def test_configured_json_logging_writes_one_object_per_line(
    root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    logs.configure("order-service")
    log = logging.getLogger("jetsaga.consumer")
    log.info("saga ended", extra={"orderId": "o-9", "outcome": "completed"})
    log.debug("not at info")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["orderId"] == "o-9"
