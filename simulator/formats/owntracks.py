"""OwnTracks location messages, as the apps publish them in MQTT mode (OwnTracks booklet, "JSON").

``owntracks/<user>/<device>`` carries ``{"_type": "location", ...}``: ``lat``/``lon`` in degrees, ``tst`` the
fix's UNIX time in seconds, ``acc`` accuracy in metres, ``alt`` metres, ``vel`` km/h, ``cog`` degrees,
``batt`` percent, ``tid`` a two-character tracker id, ``t`` the trigger (``t`` timer, ``p`` ping). The last
will on the same topic is ``{"_type": "lwt", "tst": <time of connecting>}``.
"""

from __future__ import annotations

import msgspec

from simulator.formats import Publication

_ENCODER = msgspec.json.Encoder()


def topic(user: str, device: str) -> str:
    return f"owntracks/{user}/{device}"


def location(user: str, device: str, fix: dict[str, float], at_s: int, battery_pct: int, moving: bool) -> Publication:
    body = {
        "_type": "location",
        "tid": device[-2:].upper(),
        "lat": round(fix["lat"], 6),
        "lon": round(fix["lon"], 6),
        "tst": at_s,
        "acc": round(fix["accuracy_m"]),
        "alt": round(fix["alt_m"]),
        "vel": round(fix["speed_mps"] * 3.6),
        "cog": round(fix["heading_deg"]) % 360,
        "batt": battery_pct,
        "conn": "m",
        "t": "t" if moving else "p",
    }
    return Publication(topic(user, device), _ENCODER.encode(body))


def will(user: str, device: str, connected_at_s: int) -> Publication:
    return Publication(topic(user, device), _ENCODER.encode({"_type": "lwt", "tst": connected_at_s}))
