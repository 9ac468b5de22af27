"""10,000 malformed or hostile payloads: every one dead-lettered with its topic, the consumer still consuming."""

from __future__ import annotations

import asyncio
import json
import random

from tests.ingest.helpers import publish_all, publisher, running_consumer, wait_for_count

_BAD_PAYLOADS: list[bytes] = [
    b'{"epc": "3034257B',  # truncated JSON
    b'{"epc": 3034257}',  # wrong type
    b'{"epc": "ABCD1234", "antenna": "one"}',
    b'{"epc": "ABCD1234", "antenna": true}',
    b'{"epc": "ABCD1234", "rssi_dbm": 1e400}',  # overflows to infinity
    b'{"epc": "ABCD1234", "antenna": 123456789012345678901234567890}',  # huge integer
    b'{"epc": "ABCD1234", "at": 1e300}',  # a time no clock shows
    b'{"epc": "ABCD1234", "at": "yesterday"}',
    b'{"epc": "ABCD1234", "at": -5}',
    b"\xff\xfe\x00not utf-8\x80",  # invalid UTF-8
    b'{"epc": "\xc3\x28"}',  # invalid UTF-8 inside a string
    b"",  # empty
    b"null",
    b"[]",
    b'{"reads": []}',
    b'{"reads": "all of them"}',
    b"[" * 5000,  # deep nesting
    b'{"epc": "' + b"A" * 300 + b'"}',  # EPC too long
    json.dumps({"epc": "ABCD1234", "extra": "x" * 10}).encode()[:-1],
]


def _hostile(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    payloads = [_BAD_PAYLOADS[i % len(_BAD_PAYLOADS)] for i in range(count)]
    for i in range(0, count, 997):  # a few random binary blobs, some over the 256 KiB limit (1 MB)
        size = 1_000_000 if i % 2 else rng.randint(1, 4096)
        payloads[i] = rng.randbytes(size)
    return payloads


def test_ten_thousand_hostile_payloads_are_all_dead_lettered(dsn, db, mqtt_address, topic_prefix) -> None:
    topic = f"stocktrace/{topic_prefix}-r1/reads"
    payloads = _hostile(10_000)

    async def scenario() -> None:
        async with running_consumer(dsn, mqtt_address, [topic]) as consumer:
            publish_all(publisher(mqtt_address), [(topic, p) for p in payloads])
            assert await wait_for_count(dsn, "select count(*) from dead_letters", 10_000, timeout_s=120) == 10_000
            # Still alive and consuming: a good read after all that is stored.
            publish_all(publisher(mqtt_address), [(topic, b'{"epc": "ABCD1234"}')])
            assert await wait_for_count(dsn, "select count(*) from rfid_reads", 1) == 1
            assert consumer.connected.is_set()

    asyncio.run(scenario())
    assert db.execute("select count(*) from dead_letters where topic = %s", (topic,)).fetchone() == (10_000,)
    assert db.execute("select count(*) from dead_letters where error = ''").fetchone() == (0,)
    # Every one is refused with a reason, not by a decoder failing on it.
    assert db.execute("select count(*) from dead_letters where error like 'decoder failed%'").fetchone() == (0,)
    oversized = db.execute(
        "select count(*), max(length(payload)) from dead_letters where error like '%exceeds the limit%'"
    ).fetchone()
    assert oversized is not None
    assert oversized[0] == sum(1 for p in payloads if len(p) > 262144)
    assert oversized[1] == 1024  # the first KiB is kept for diagnosis, not the megabyte
