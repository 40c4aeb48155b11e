"""JetStream publishing with many messages in flight and cheap acknowledgements.

`js.publish` is a `Client.request` per message: a future, a random token and a timer each,
`json.loads` of the ack into a dataclass. A `Publisher` instead owns one wildcard reply
subscription (`<inbox>.*`, made on first use; nats-py replays it after a reconnect under the
same subject), gives each message the reply subject `<inbox>.<counter>`, and settles a whole
batch with one future and one deadline. Acks decode with a reused msgspec Decoder. Errors are
nats-py's own types (`NoStreamResponseError`, `APIError` and its per-code subclasses,
`nats.errors.TimeoutError`), so callers of `js.publish` keep catching what they caught.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import errors as js_errors

from jetsaga import natsclient
from jetsaga.contracts import MSG_ID

Message = tuple[str, bytes, dict[str, str]]  # subject, payload, headers


class ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct, frozen=True):
    """JetStream's reply to a publish; `error` is set only on the wire, never in a result."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: ApiError | None = None


_decoder = msgspec.json.Decoder(PubAck)
_ERRORS_BY_CODE: dict[int, type[js_errors.APIError]] = {
    400: js_errors.BadRequestError,
    404: js_errors.NotFoundError,
    500: js_errors.ServerError,
    503: js_errors.ServiceUnavailableError,
}


def parse_ack(data: bytes, headers: dict[str, str] | None) -> PubAck:
    """The ack of one publish, or the error JetStream answered with."""
    if not data and headers and headers.get("Status") == "503":
        raise js_errors.NoStreamResponseError  # no stream listens on the subject
    try:
        ack = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise js_errors.APIError(description=f"undecodable publish ack {data[:80]!r}") from exc
    if ack.error is not None:
        e = ack.error
        kind = _ERRORS_BY_CODE.get(e.code, js_errors.APIError)
        raise kind(code=e.code, err_code=e.err_code, description=e.description)
    return ack


class PublishFailed(nats.errors.Error):
    """Some messages of a batch were not acknowledged; none of its acks should be trusted to
    mean "all published", though the others may have been stored."""

    def __init__(self, failures: list[tuple[int, str, str, BaseException]], total: int) -> None:
        self.failures = failures  # (index, subject, Nats-Msg-Id, error)
        shown = "; ".join(f"#{i} {s} id={m!r}: {e!r}" for i, s, m, e in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} of {total} publishes failed: {shown}{more}")


class _Batch:
    __slots__ = ("acks", "done", "errors", "remaining")

    def __init__(self, size: int) -> None:
        self.acks: list[PubAck | None] = [None] * size
        self.errors: dict[int, BaseException] = {}
        self.remaining = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if size == 0:
            self.done.set_result(None)

    def settle(self, index: int, ack: PubAck | None, error: BaseException | None) -> None:
        if error is not None:
            self.errors[index] = error
        else:
            self.acks[index] = ack
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


class Sending:
    """A batch `Publisher.send` put on the wire, whose acks are still to come."""

    __slots__ = ("batch", "deadline", "tokens")

    def __init__(self, size: int, deadline: float) -> None:
        self.batch = _Batch(size)
        self.deadline = deadline  # event-loop time
        self.tokens: list[str] = []


class Publisher:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._counter = itertools.count()
        self._pending: dict[str, tuple[_Batch, int]] = {}

    @property
    def pending(self) -> int:
        """Messages awaiting their ack (0 whenever no batch is in progress)."""
        return len(self._pending)

    async def _reply_prefix(self) -> str:
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    prefix = self._nc.new_inbox() + "."
                    self._sub = await natsclient.subscribe(self._nc, prefix + "*", self._on_reply)
                    self._prefix = prefix
        return self._prefix

    def _on_reply(self, msg: Msg) -> None:
        waiting = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if waiting is None:
            return  # the ack of a batch that already timed out
        batch, index = waiting
        try:
            batch.settle(index, parse_ack(msg.data, msg.headers), None)
        except nats.errors.Error as exc:
            batch.settle(index, None, exc)

    async def send(
        self,
        messages: Sequence[Message],
        timeout: float = 10.0,  # noqa: ASYNC109 - one deadline for the whole batch is the API
    ) -> Sending:
        """Put every message on the wire now, for `settle` to collect the acks later. The
        bytes go to the socket before this returns (with this module's client), not a turn
        of the event loop later from nats-py's flusher task. A message that cannot be sent
        (closed connection, reconnect buffer full, bad header) is settled as failed at once.
        (The first call on a closed client raises its `ConnectionClosedError`, as no reply
        subscription can be made.)"""
        prefix = await self._reply_prefix()
        sending = Sending(len(messages), asyncio.get_running_loop().time() + timeout)
        batch, tokens = sending.batch, sending.tokens
        try:
            async with asyncio.timeout_at(sending.deadline):
                for index, (subject, payload, headers) in enumerate(messages):
                    token = str(next(self._counter))
                    self._pending[token] = (batch, index)
                    tokens.append(token)
                    try:
                        await self._nc.publish(subject, payload, prefix + token, headers)
                    except nats.errors.Error as exc:  # closed, reconnect buffer full, bad header
                        del self._pending[token]
                        batch.settle(index, None, exc)
        except TimeoutError:
            pass  # the unsent ones time out in `settle`
        except BaseException:
            self._forget(tokens)
            raise
        natsclient.write_now(self._nc)
        return sending

    async def settle(self, sending: Sending, messages: Sequence[Message]) -> list[PubAck]:
        """The acks of a `send` of `messages`, in order; or `PublishFailed` once each is
        acked, refused or past the send's deadline."""
        batch = sending.batch
        try:
            async with asyncio.timeout_at(sending.deadline):
                await batch.done
        except TimeoutError:
            for index in range(len(batch.acks)):
                if batch.acks[index] is None and index not in batch.errors:
                    batch.errors[index] = nats.errors.TimeoutError()
        finally:
            self._forget(sending.tokens)
        if batch.errors:
            failures = [(i, messages[i][0], messages[i][2].get(MSG_ID, ""), e)
                        for i, e in sorted(batch.errors.items())]  # fmt: skip
            raise PublishFailed(failures, len(messages))
        return batch.acks  # type: ignore[return-value]  # all set: no errors, none missing

    def _forget(self, tokens: list[str]) -> None:
        for token in tokens:
            self._pending.pop(token, None)

    async def publish_batch(
        self,
        messages: Sequence[Message],
        timeout: float = 10.0,  # noqa: ASYNC109 - one deadline for the whole batch is the API
    ) -> list[PubAck]:
        """Publish all at once; return the acks in order, or raise `PublishFailed` once every
        message is acked, refused or past `timeout` seconds from the start. (The first call
        on a closed client raises its `ConnectionClosedError` before sending anything.)"""
        if not messages:
            return []
        return await self.settle(await self.send(messages, timeout), messages)

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        timeout: float = 10.0,  # noqa: ASYNC109 - as publish_batch
    ) -> PubAck:
        """Publish one message; raise its own error (not `PublishFailed`) when it fails."""
        try:
            return (await self.publish_batch([(subject, payload, headers)], timeout))[0]
        except PublishFailed as exc:
            raise exc.failures[0][3] from None
