"""The delivery count and the storing time read from a stream message's reply subject."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from jetsaga.consumer import ack_info, deliveries_of


def _msg(reply: str) -> Msg:
    return Msg(_client=None, subject="orders.created", reply=reply)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>
        ("$JS.ACK.ORDERS.inventory-service.1.18.16.1763820000000000000.0", 1),
        ("$JS.ACK.PAYMENTS.payment-service.3.5012.4990.1763820000000000000.212", 3),
        # with a domain and an account hash (and a token after the pending count)
        ("$JS.ACK.hub.ACCHASH.ORDERS.inventory-service.2.18.16.1763820000000000000.0.r1", 2),
    ],
)
def test_reads_the_delivery_count_and_storing_time_as_nats_py_does(
    reply: str, expected: int
) -> None:
    msg = _msg(reply)
    assert deliveries_of(msg) == expected == msg.metadata.num_delivered
    delivered, stored_at = ack_info(msg)
    assert delivered == expected
    assert stored_at == msg.metadata.timestamp.timestamp() == 1763820000.0


@pytest.mark.parametrize("reply", ["", "_INBOX.abc.1", "$JS.API.CONSUMER.MSG.NEXT.A.B.c.d"])
def test_a_message_not_from_a_stream_is_refused(reply: str) -> None:
    with pytest.raises(NotJSMessageError):
        deliveries_of(_msg(reply))
    with pytest.raises(NotJSMessageError):
        ack_info(_msg(reply))
