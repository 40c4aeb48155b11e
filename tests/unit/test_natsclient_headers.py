"""The lean client reads and writes header blocks exactly as nats-py does (no I/O)."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NatsPy

from jetsaga import natsclient

BLOCKS = [
    b"NATS/1.0\r\nNats-Msg-Id: orders.created:o-1\r\nSaga-Id: o-1\r\nCausation-Id: \r\n\r\n",
    b"NATS/1.0\r\nTraceparent:00-abc-def-01\r\n\r\n",  # no blank after the colon
    b"NATS/1.0\r\nA:\tpadded value \t\r\n\r\n",
    b"NATS/1.0\r\nWeird Name: dropped\r\nOk: kept\r\n\r\n",  # a name with a blank
    b"NATS/1.0\r\n N: leading blank in the name\r\n\r\n",
    b"NATS/1.0\r\nNa\xc3\xafve: non-ASCII name\r\n\r\n",
    b"NATS/1.0\r\nV: \xff\xfe not UTF-8\r\n\r\n",
    b"NATS/1.0\r\n: empty name\r\n\r\n",
    b"NATS/1.0\r\nno colon at all\r\nX: y: z\r\n\r\n",
    b"NATS/1.0\r\nDup: first\r\nDup: second\r\n\r\n",
    b"NATS/1.0\r\n\r\n",
]


def nats_py_reads(block: bytes) -> dict[str, str] | None:
    return NatsPy._parse_header_lines(block[len(b"NATS/1.0\r\n") :]) or None


@pytest.mark.parametrize("block", BLOCKS)
def test_a_received_block_reads_as_nats_py_reads_it(block: bytes) -> None:
    client = natsclient.Client()
    first = client._read_headers(block)
    again = client._read_headers(block)  # names now remembered

    assert first == again == nats_py_reads(block)


def test_names_past_the_remembered_ones_are_still_read() -> None:
    client = natsclient.Client()
    for i in range(natsclient._NAMES_KEPT + 10):
        assert client._read_headers(f"NATS/1.0\r\nH{i}: v\r\n\r\n".encode()) == {f"H{i}": "v"}
    assert len(client._names_read) == natsclient._NAMES_KEPT


def test_names_written_past_the_remembered_ones_are_still_checked() -> None:
    client = natsclient.Client()
    for i in range(natsclient._NAMES_KEPT + 10):
        assert client._header_block({f"H{i}": "v"}) == f"NATS/1.0\r\nH{i}: v\r\n\r\n".encode()
    assert len(client._header_names) == natsclient._NAMES_KEPT
    assert client._header_block({"Bad Name": "v"}) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Nats-Msg-Id": "payments.succeeded:o-1", "Saga-Id": "o-1", "Causation-Id": "x"},
        {"Causation-Id": ""},
        {"Traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "Saga-Id": "é"},
    ],
)
def test_a_written_block_is_the_one_nats_py_writes(headers: dict[str, str]) -> None:
    client = natsclient.Client()
    block = client._header_block(headers)

    assert block is not None
    lines = [f"{k}: {v}\r\n".encode() for k, v in headers.items()]
    assert block == b"NATS/1.0\r\n" + b"".join(lines) + b"\r\n"


@pytest.mark.parametrize(
    "headers",
    [
        {"Saga-Id": "o-1\r\nInjected: yes"},
        {"Saga-Id": "o-1\n"},
        {"Saga-Id": " o-1"},
        {"Bad Name": "v"},
        {" Saga-Id": "v"},
        {"": "v"},
        {"Saga-Id": 5},
    ],
)
def test_anything_to_clean_or_refuse_is_left_to_nats_py(headers: dict[str, object]) -> None:
    client = natsclient.Client()
    for _ in range(2):  # a name checked once is not trusted for its value
        assert client._header_block(headers) is None
