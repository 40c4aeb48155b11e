"""The publisher's ack parsing and error mapping, without a server."""

from __future__ import annotations

import nats.errors
import pytest
from nats.js import errors as js_errors

from jetsaga.publisher import PubAck, PublishFailed, parse_ack


def test_ack_gives_stream_sequence_and_duplicate_flag() -> None:
    assert parse_ack(b'{"stream":"ORDERS","seq":7}', None) == PubAck(stream="ORDERS", seq=7)
    again = parse_ack(b'{"stream":"ORDERS","domain":"hub","seq":7,"duplicate":true}', None)
    assert again == PubAck(stream="ORDERS", seq=7, duplicate=True)


def test_no_responders_status_means_no_stream_for_the_subject() -> None:
    with pytest.raises(js_errors.NoStreamResponseError):
        parse_ack(b"", {"Status": "503"})


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, js_errors.BadRequestError),
        (404, js_errors.NotFoundError),
        (500, js_errors.ServerError),
        (503, js_errors.ServiceUnavailableError),
        (429, js_errors.APIError),
    ],
)
def test_api_error_maps_to_the_nats_error_type_of_its_code(
    code: int, kind: type[js_errors.APIError]
) -> None:
    body = b'{"error":{"code":%d,"err_code":10060,"description":"expected stream does not match"}}'
    with pytest.raises(kind) as caught:
        parse_ack(body % code, None)
    assert type(caught.value) is kind
    assert (caught.value.code, caught.value.err_code) == (code, 10060)
    assert caught.value.description == "expected stream does not match"


def test_undecodable_ack_is_an_api_error_quoting_it() -> None:
    with pytest.raises(js_errors.APIError, match="undecodable publish ack b'<html>'"):
        parse_ack(b"<html>", None)
    with pytest.raises(js_errors.APIError):
        parse_ack(b'{"stream":"ORDERS","seq":"seven"}', None)


def test_batch_failure_names_the_failed_messages_and_counts_the_rest() -> None:
    failures: list[tuple[int, str, str, BaseException]] = [
        (i, "orders.created", f"id-{i}", nats.errors.TimeoutError()) for i in range(7)
    ]
    error = PublishFailed(failures, total=500)
    assert isinstance(error, nats.errors.Error)  # callers of js.publish already catch these
    text = str(error)
    assert text.startswith("7 of 500 publishes failed: #0 orders.created id='id-0'")
    assert "id-4" in text and "id-5" not in text and text.endswith("(and 2 more)")
