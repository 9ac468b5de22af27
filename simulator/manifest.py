"""The registry manifest of a scenario (``stocktrace apply -f``), and the topic routes its devices need.

Device ids are the ids stocktrace's decoders put in readings (devices/examples/site.yaml): a Zebra reader by
its topic, an Impinj reader by its hostname, an OwnTracks phone as ``<user>:<device>``, a Sparkplug node as
``<group>/<node>``, a LoRaWAN sensor by its TTS device id behind the application's gateway entry. The result
is validated with the registry's own manifest model before it is written.
"""

from __future__ import annotations

from typing import Any

import yaml

from devices.manifest import Manifest
from simulator.scenario import LocationKind, LocationSpec, ReaderSpec, Scenario, SensorSpec, SiteSpec, VehicleSpec

TTS_APPLICATION = "stocktrace-sensors"
TTS_TENANT = "ttn"
# Our staging areas are zones to the registry, which has no separate kind for them.
_KINDS = {LocationKind.STAGING: "zone"}
# Silence after which a device counts as offline: a few missed reports.
_MISSED_REPORTS = 3
_MIN_TIMEOUT_S = 180

# Topic filter → decoder, per format, as STOCKTRACE_ROUTES takes them (the native format needs no route).
ROUTES = {
    "zebra-fx": "zebra/#",
    "impinj-r700": "impinj/+/events",
    "owntracks": "owntracks/#",
    "ttn-v3": "v3/+/devices/+/up",
    "sparkplug-b": "spBv1.0/#",
    "tasmota": "tele/#",
}


def routes(scenario: Scenario) -> str:
    """The STOCKTRACE_ROUTES value that sends each of the scenario's formats to its decoder."""
    used = {r.format.value for s in scenario.sites for r in s.readers} | {
        x.format.value for s in scenario.sites for x in s.sensors
    }
    used |= {v.tracker.format for v in scenario.vehicles} | {v.reefer.format for v in scenario.vehicles}
    return ";".join(f"{ROUTES[fmt]}={fmt}" for fmt in sorted(used) if fmt in ROUTES)


def service_environment(scenario: Scenario, topic_prefix: str = "") -> str:
    """The service's settings for the scenario's devices: its routes, and the prefix its topics are under."""
    environment = f"STOCKTRACE_ROUTES='{routes(scenario)}'"
    if prefix := topic_prefix.strip("/"):
        environment += f" STOCKTRACE_MQTT_TOPIC_PREFIX='{prefix}'"
    return environment


def _timeout(interval_s: float) -> int:
    return max(_MIN_TIMEOUT_S, round(interval_s * _MISSED_REPORTS))


def _location(spec: LocationSpec, children: list[dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": spec.id, "kind": _KINDS.get(spec.kind, spec.kind.value)}
    if spec.name:
        entry["name"] = spec.name
    if spec.temperature_c is not None:
        entry["temperature_c"] = {"min": spec.temperature_c.min, "max": spec.temperature_c.max}
    if children:
        entry["locations"] = children
    return entry


def _locations(site: SiteSpec, parent: str | None, vehicles: list[VehicleSpec]) -> list[dict[str, Any]]:
    entries = [
        _location(loc, _locations(site, loc.id, []))
        for loc in site.locations
        if loc.parent == parent
    ]  # fmt: skip
    for vehicle in vehicles:
        entry: dict[str, Any] = {"id": vehicle.id, "kind": "vehicle", "name": vehicle.name}
        if vehicle.temperature_c is not None:
            entry["temperature_c"] = {"min": vehicle.temperature_c.min, "max": vehicle.temperature_c.max}
        entries.append(entry)
    return entries


def _site(site: SiteSpec, vehicles: list[VehicleSpec]) -> dict[str, Any]:
    home = [v for v in vehicles if v.route[0] == site.id]
    return {
        "id": site.id, "name": site.name, "timezone": site.timezone,
        "geofence": {"center": [site.lat, site.lon], "radius_m": site.radius_m},
        "locations": _locations(site, None, home),
    }  # fmt: skip


def _antenna(port: int, location: str, side: str | None) -> dict[str, Any]:
    return {"port": port, "location": location, **({"side": side} if side else {})}


def _reader(reader: ReaderSpec, prefix: str) -> dict[str, Any]:
    topics = {
        "zebra-fx": f"zebra/{reader.id}",
        "impinj-r700": f"impinj/{reader.id}",
        "native": f"stocktrace/{reader.id}",
    }
    locations = sorted({a.location for a in reader.antennas})
    entry: dict[str, Any] = {
        "id": reader.id, "kind": "rfid_reader", "source": reader.format.value,
        "mqtt": {"username": reader.id, "topic_prefix": prefix + topics[reader.format.value]},
        "inactivity_timeout_s": _timeout(reader.report_interval_s),
        "antennas": [_antenna(a.port, a.location, a.side) for a in reader.antennas],
    }  # fmt: skip
    if reader.model:
        entry["name"] = f"{reader.model} {reader.id}"
    if len(locations) == 1:
        entry["location"] = locations[0]
    return entry


def _sensor(sensor: SensorSpec, prefix: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": sensor.id, "kind": "sensor", "source": sensor.format.value, "location": sensor.location,
        "inactivity_timeout_s": _timeout(sensor.interval_s),
    }  # fmt: skip
    if sensor.model:
        entry["name"] = sensor.model
    if sensor.format.value == "ttn-v3":
        entry["mqtt"] = None  # behind The Things Stack, which publishes for it
    elif sensor.format.value == "tasmota":
        entry["mqtt"] = {"username": sensor.id, "topic_prefix": f"{prefix}tele/{sensor.id}"}
    else:
        entry["mqtt"] = {"username": sensor.id, "topic_prefix": f"{prefix}stocktrace/{sensor.id}"}
    return entry


def _vehicle_devices(vehicle: VehicleSpec, prefix: str) -> list[dict[str, Any]]:
    tracker, reefer = vehicle.tracker, vehicle.reefer
    if tracker.format == "owntracks":
        gps_id, gps_topic = f"{tracker.user}:{tracker.id}", f"owntracks/{tracker.user}/{tracker.id}"
    else:
        gps_id, gps_topic = tracker.id, f"stocktrace/{tracker.id}"
    # A reefer controller measures the box it cools: a sensor of the vehicle, whatever protocol it speaks (a
    # Sparkplug edge node publishing its own metrics is that controller, not a gateway for other devices).
    if reefer.format == "sparkplug-b":
        unit_id, unit_topic = f"{reefer.group}/{reefer.id}", f"spBv1.0/{reefer.group}"
    else:
        unit_id, unit_topic = reefer.id, f"stocktrace/{reefer.id}"
    return [
        {"id": gps_id, "kind": "gps_tracker", "source": tracker.format, "location": vehicle.id,
         "name": f"GPS of {vehicle.name}", "inactivity_timeout_s": _timeout(tracker.interval_s * 5),
         "mqtt": {"username": tracker.id, "topic_prefix": prefix + gps_topic}},
        {"id": unit_id, "kind": "sensor", "source": reefer.format, "location": vehicle.id,
         "name": f"Refrigeration unit of {vehicle.name}", "inactivity_timeout_s": _timeout(reefer.interval_s),
         "mqtt": {"username": reefer.id, "topic_prefix": prefix + unit_topic}},
    ]  # fmt: skip


def manifest(scenario: Scenario, topic_prefix: str = "") -> dict[str, Any]:
    """The scenario's sites, locations and devices as a registry manifest, validated by the registry's model."""
    prefix = f"{topic_prefix.strip('/')}/" if topic_prefix.strip("/") else ""
    devices: list[dict[str, Any]] = []
    for site in scenario.sites:
        devices += [_reader(reader, prefix) for reader in site.readers]
        devices += [_sensor(sensor, prefix) for sensor in site.sensors]
    if any(s.format.value == "ttn-v3" for site in scenario.sites for s in site.sensors):
        gateway = f"tts-{TTS_APPLICATION}"
        devices.append({
            "id": gateway, "kind": "gateway", "source": "ttn-v3", "name": "The Things Stack application",
            "mqtt": {"username": gateway, "topic_prefix": f"{prefix}v3/{TTS_APPLICATION}@{TTS_TENANT}"},
        })  # fmt: skip
    for vehicle in scenario.vehicles:
        devices += _vehicle_devices(vehicle, prefix)
    document = {"sites": [_site(site, scenario.vehicles) for site in scenario.sites], "devices": devices}
    Manifest.model_validate(document)
    return document


def manifest_yaml(scenario: Scenario, topic_prefix: str = "") -> str:
    header = (
        f"# Registry of scenario {scenario.name!r}, written by `stocktrace simulate --manifest`.\n"
        f"# Apply with: stocktrace apply -f <this file>\n"
        f"# Routes for the service: {service_environment(scenario, topic_prefix)}\n"
    )
    return header + yaml.safe_dump(manifest(scenario, topic_prefix), sort_keys=False, allow_unicode=True, width=120)


def rules(scenario: Scenario) -> dict[str, Any]:
    """Alert rules for the scenario: the shipped defaults, with inventory variance judged where stock is kept.

    - A variance of one unit counts for the serialised SKUs. The default thresholds (2 units and 3 % of the
      book) ignore one unit out of place, which for yoghurt is noise and for a medicine pack with its own serial
      is a pack to find: under them a single misplaced unit is never a variance (one unit short at its shelf,
      one over at the shelf it went to).
    - No variance at receiving, shipping, staging and dock doors: goods pass through them in minutes, so a book
      exported a quarter of an hour ago and what the readers see now differ by whatever moved in between.
    """
    overrides: list[dict[str, Any]] = [
        {"match": {"location": loc.id}, "enabled": False}
        for site in scenario.sites
        for loc in site.locations
        if loc.role is not None or loc.kind in (LocationKind.DOCK_DOOR, LocationKind.STAGING)
    ]
    overrides += [{"match": {"gtin": sku.gtin}, "absolute_units": 1} for sku in scenario.skus if sku.serialised]
    return {"rules": {"inventory_variance": {"overrides": overrides}}} if overrides else {}


def rules_yaml(scenario: Scenario) -> str:
    header = (
        f"# Alert rules of scenario {scenario.name!r}, written by `stocktrace simulate --manifest`: the shipped\n"
        f"# defaults; no variance where goods pass through, one unit for serialised SKUs.\n"
        f"# Use with STOCKTRACE_RULES_FILE=<this file>.\n"
    )
    return header + yaml.safe_dump(rules(scenario), sort_keys=False, allow_unicode=True, width=120)
