"""`jetsaga dlq list | show ID | replay ID | replay --all` (SPEC §4.4).

A dead letter's ID is its sequence number in the SAGA_ERRORS stream. A replay re-publishes
the original message on its original subject under a fresh `Nats-Msg-Id` (the original id
would be dropped as a duplicate inside the dedupe window), checks the publish ack, and then
removes the dead letter. Handlers are idempotent, so a replay never double-reserves or
double-charges; a replay that fails again comes back as a new dead letter.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import msgspec
import nats
import nats.js.errors
from nats.js import JetStreamContext

from jetsaga import config, contracts
from jetsaga.contracts import DeadLetter

STREAM = "SAGA_ERRORS"
_decoder = msgspec.json.Decoder(DeadLetter)
Out = Callable[[str], None]


async def letters(js: JetStreamContext) -> AsyncIterator[tuple[int, DeadLetter]]:
    jsm = js._jsm
    state = (await jsm.stream_info(STREAM)).state
    if not state.messages:
        return
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            raw = await jsm.get_msg(STREAM, seq)
        except nats.js.errors.NotFoundError:
            continue  # removed after a replay
        yield seq, _decoder.decode(raw.data or b"")


async def get(js: JetStreamContext, seq: int) -> DeadLetter | None:
    try:
        raw = await js._jsm.get_msg(STREAM, seq)
    except nats.js.errors.NotFoundError:
        return None
    return _decoder.decode(raw.data or b"")


async def replay(js: JetStreamContext, seq: int, letter: DeadLetter) -> int:
    """Re-publish one dead letter; returns the new message's stream sequence."""
    if not letter.subject:
        raise ValueError(f"dead letter {seq} has no original message to replay")
    headers = {k: v for k, v in letter.headers.items() if not k.startswith("Nats-")}
    headers[contracts.MSG_ID] = f"replay:{uuid.uuid4()}"
    ack = await js.publish(letter.subject, letter.payload, headers=headers)
    if ack.duplicate:
        raise RuntimeError(f"replay of {seq} was dropped as a duplicate")
    await js._jsm.delete_msg(STREAM, seq)
    return ack.seq


def _summary(seq: int, letter: DeadLetter) -> str:
    order = letter.headers.get(contracts.SAGA_ID, "-")
    error = letter.last_error if len(letter.last_error) <= 80 else letter.last_error[:77] + "..."
    return (f"{seq:>6}  {letter.failed_at}  {letter.durable:<26} {letter.subject or '-':<26} "
            f"order={order} deliveries={letter.delivery_count}  {error}")  # fmt: skip


async def command(args: argparse.Namespace, settings: config.Settings, out: Out = print) -> int:
    nc = await nats.connect(settings.nats_url, name="jetsaga-dlq", connect_timeout=5)
    js = nc.jetstream()
    try:
        if args.dlq_command == "list":
            count = 0
            async for seq, letter in letters(js):
                out(_summary(seq, letter))
                count += 1
            out(f"{count} dead letter(s)")
            return 0
        if args.dlq_command == "show":
            shown = await get(js, args.id)
            if shown is None:
                out(f"no dead letter {args.id}")
                return 1
            out(msgspec.json.format(contracts.encode(shown)).decode())
            return 0
        targets = [(s, d) async for s, d in letters(js)] if args.all else []
        if not args.all:
            one = await get(js, args.id)
            if one is None:
                out(f"no dead letter {args.id}")
                return 1
            targets = [(args.id, one)]
        failures = 0
        for seq, letter in targets:
            try:
                new_seq = await replay(js, seq, letter)
                out(f"replayed {seq} -> {letter.subject} (stream seq {new_seq})")
            except (ValueError, RuntimeError, nats.errors.Error) as exc:
                failures += 1
                out(f"not replayed {seq}: {exc}")
        return 1 if failures else 0
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(command(args, config.load()))
