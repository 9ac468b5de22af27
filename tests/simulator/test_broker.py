"""Through the real Mosquitto: an accelerated run and the load mode, counted by a subscriber."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulator.load import run_load
from simulator.run import run
from simulator.world import load_scenario

SMALL = Path(__file__).parent / "small.yaml"
FORMAT_OF_ROOT = {
    "zebra": "zebra-fx", "impinj": "impinj-r700", "stocktrace": "native", "tele": "tasmota", "v3": "ttn-v3",
    "spBv1.0": "sparkplug-b", "owntracks": "owntracks",
}  # fmt: skip


class Subscriber:
    def __init__(self, address: tuple[str, int], topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(*address)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def wait_for(self, count: int, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # and nothing more than that arrives
        return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_accelerated_run_publishes_every_format_to_the_broker(mqtt_address: tuple[str, int], topic_prefix: str) -> None:
    subscriber = Subscriber(mqtt_address, f"{topic_prefix}/#")
    try:
        result = run(
            load_scenario(SMALL), mode="accelerated", mqtt=mqtt_address, duration_s=3600, topic_prefix=topic_prefix
        )
        expected = sum(result.messages.values()) + result.wills
        assert subscriber.wait_for(expected) == expected
    finally:
        subscriber.close()
    by_format = Counter(FORMAT_OF_ROOT[topic.split("/")[1]] for topic, _ in subscriber.messages)
    wills = [
        (t, p)
        for t, p in subscriber.messages
        if t == f"{topic_prefix}/stocktrace/dc-cold-gw/status" and p == b"offline"
    ]
    assert len(wills) == result.wills == 1  # the reader taken offline left its last will
    assert by_format - Counter({"native": 1}) == Counter(result.messages)
    assert set(result.messages) == set(FORMAT_OF_ROOT.values())
    # Device time comes from the virtual clock: the run covered an hour in far less.
    assert result.ended_at - result.started_at >= 3599
    assert result.real_elapsed_s < 600


def test_load_mode_reports_what_the_broker_acknowledged(mqtt_address: tuple[str, int], topic_prefix: str) -> None:
    subscriber = Subscriber(mqtt_address, f"{topic_prefix}/stocktrace/+/reads")
    try:
        result = run_load(*mqtt_address, devices=4, reads_per_s=600, duration_s=1.5, batch=3, processes=1,
                          topic_prefix=topic_prefix)  # fmt: skip
        assert subscriber.wait_for(result.messages_acked) == result.messages_acked
    finally:
        subscriber.close()
    assert result.messages_acked == result.messages_sent > 200
    assert result.reads_acked == 3 * result.messages_acked
    assert 300 < result.reads_per_s < 700
    assert {topic.split("/")[2] for topic, _ in subscriber.messages} == {f"load-{n:05d}" for n in range(4)}
