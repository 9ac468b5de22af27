"""The physics that make tracking hard: RSSI and read rates fall with distance, cross-reads, misses, and the
network's duplicates and late deliveries, present when enabled and absent when switched off."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from simulator.delivery import Delivery, Message
from simulator.publisher import MemorySink
from simulator.radio import inventory
from simulator.run import run
from simulator.scenario import AntennaSpec, Physics
from simulator.truth import GroundTruth
from simulator.world import load_scenario

SMALL = Path(__file__).parent / "small.yaml"
ANTENNA = AntennaSpec(port=1, location="shelf", at=(0.0, 0.0), range_m=2.2, read_rate_hz=0.5)


def _at(distance_m: float, n: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.full(n, distance_m), np.zeros(n), np.zeros(n)


def test_rssi_falls_with_distance_on_average() -> None:
    rng = np.random.default_rng(1)
    physics = Physics()
    means, spreads = [], []
    for distance in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        seen = inventory(ANTENNA, *_at(distance), 60.0, physics, rng)
        means.append(float(np.mean(seen.rssi_dbm)))
        spreads.append(float(np.std(seen.rssi_dbm)))
    assert all(near > far for near, far in itertools.pairwise(means)), means
    # Log-distance path loss: doubling the distance costs 10·n·log10(2) dB on average.
    assert means[1] - means[3] == pytest.approx(10 * physics.path_loss_exponent * np.log10(2), abs=0.5)
    assert min(spreads) > 0.5 * physics.rssi_noise_db  # noisy, as multipath makes it


def test_reads_and_detection_fall_off_around_the_range() -> None:
    rng = np.random.default_rng(2)
    physics = Physics()
    shares, reads = [], []
    for distance in (0.5, 2.2, 3.0, 4.5):
        seen = inventory(ANTENNA, *_at(distance), 60.0, physics, rng)
        shares.append(len(seen) / 4000)
        reads.append(float(np.mean(seen.reads)))
    assert shares[0] > 0.85
    # range_m is where a tag is read in half the windows (less the windows missed outright).
    assert shares[1] == pytest.approx(0.5 * (1 - physics.miss_rate), abs=0.04)
    assert shares[0] > shares[1] > shares[2] > shares[3]
    assert 0.0 < shares[2] < 0.4  # beyond the range tags are still read now and then: cross-reads
    assert shares[3] < 0.05
    assert reads[0] > reads[1] > reads[2]  # and when they are, fewer rounds catch them


def test_missed_reads_follow_the_miss_rate_and_vanish_when_ideal() -> None:
    rng = np.random.default_rng(3)
    close = ANTENNA.model_copy(update={"range_m": 6.0})  # the tags are well inside its range
    lossy = inventory(close, *_at(0.5), 60.0, Physics(miss_rate=0.2), rng)
    assert len(lossy) / 4000 == pytest.approx(0.8, abs=0.03)
    ideal = inventory(close, *_at(0.5), 60.0, Physics().ideal(), rng)
    assert len(ideal) == 4000
    assert np.all(ideal.rssi_dbm == ideal.rssi_dbm[0])  # no noise either


def test_cross_reads_into_the_neighbouring_shelf_but_not_the_far_room() -> None:
    # Shelves dc-s-01 and dc-s-02 are 4 m apart; the freezer is 16 m from the cold room.
    sink = MemorySink()
    result = run(load_scenario(SMALL), mqtt=None, sink=sink, duration_s=1800)
    own: dict[tuple[str, int], list[float]] = defaultdict(list)
    cross: dict[tuple[str, int], list[float]] = defaultdict(list)
    covers = {("dc-shelves", 1): "dc-s-01", ("dc-shelves", 2): "dc-s-02", ("dc-cold-gw", 1): "dc-cold",
              ("dc-cold-gw", 2): "dc-freezer"}  # fmt: skip
    windows = {"dc-shelves": 120.0, "dc-cold-gw": 60.0}
    for message in sink.messages:
        for read in message.reads:
            key = (message.device_id, read.antenna)
            if key in covers:
                # A report covers a window; an item picked during it was still at home for part of it.
                window = (message.created_at - windows[message.device_id], message.created_at)
                (own if _was_at(result.truth, read.epc, covers[key], window) else cross)[key].append(read.rssi_dbm)
    shelf_cross = len(cross[("dc-shelves", 1)]) / (len(own[("dc-shelves", 1)]) + len(cross[("dc-shelves", 1)]))
    assert 0.02 < shelf_cross < 0.5
    assert np.mean(own[("dc-shelves", 1)]) > np.mean(cross[("dc-shelves", 1)]) + 5  # the neighbours are fainter
    assert not cross[("dc-cold-gw", 1)]
    assert not cross[("dc-cold-gw", 2)]
    assert 0 < result.cross_reads < result.tag_reads


def _was_at(truth: GroundTruth, epc: str, place: str, window: tuple[float, float]) -> bool:
    return any(
        stay.location_id == place and stay.since <= window[1] and (stay.until is None or stay.until >= window[0])
        for stay in truth.stays[epc]
    )


def _released(physics: Physics) -> tuple[list[int], int]:
    delivery = Delivery(physics, np.random.default_rng(4))
    for n in range(5000):
        delivery.submit(Message("reader", "native", "t", str(n).encode()), n * 0.5)
    order = [int(m.payload) for m in delivery.drain()]
    return order, delivery.duplicates


def test_delivery_duplicates_and_reorders_when_enabled() -> None:
    order, duplicates = _released(Physics())
    assert duplicates > 10
    assert len(order) == 5000 + duplicates
    inversions = sum(1 for a, b in itertools.pairwise(order) if b < a)
    assert inversions > 20  # late messages overtaken by newer ones


def test_delivery_keeps_order_and_count_when_ideal() -> None:
    order, duplicates = _released(Physics().ideal())
    assert duplicates == 0
    assert order == list(range(5000))


def _reader_streams(ideal: bool) -> dict[str, list[int]]:
    sink = MemorySink()
    run(load_scenario(SMALL), mqtt=None, sink=sink, duration_s=2400, ideal=ideal)
    streams: dict[str, list[int]] = defaultdict(list)
    for message in sink.messages:
        streams[message.device_id] += [read.at_ms for read in message.reads]
    return streams


def test_runs_deliver_reads_out_of_order_and_twice_only_when_physics_say_so() -> None:
    noisy = _reader_streams(ideal=False)
    assert any(any(b < a for a, b in itertools.pairwise(s)) for s in noisy.values())
    assert any(len(s) != len(set(s)) for s in noisy.values())
    ideal = _reader_streams(ideal=True)
    assert all(s == sorted(s) for s in ideal.values())
