"""Mosquitto password and ACL files from the registry: each device may publish only on its own topics.

Mosquitto reads both files at start and again on SIGHUP (mosquitto.conf(5), password_file and acl_file:
"Reloaded on reload signal"), so after `stocktrace devices mosquitto` rewrites them, reload the broker with
``kill -HUP $(pidof mosquitto)`` or ``systemctl reload mosquitto``; connected clients keep their session.

The service user (``STOCKTRACE_MQTT_USERNAME``) may read every topic, and write only Sparkplug node commands
(the rebirth requests the Sparkplug decoder asks for). Nothing is granted to anonymous clients: run the broker
with ``allow_anonymous false``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from devices.registry import Device

# mosquitto_passwd(1) since 2.0 writes "$7$<iterations>$<base64 salt>$<base64 hash>": PBKDF2-HMAC-SHA512
# with a 12-byte salt, a 64-byte hash and 101 iterations by default; the broker reads the count per line.
_HASH_ID: Final = "7"
_SALT_BYTES: Final = 12
DEFAULT_ITERATIONS: Final = 101
SPARKPLUG_NAMESPACE: Final = "spBv1.0"


@dataclass(frozen=True, slots=True)
class Grants:
    """Topic filters a client may publish on and subscribe to."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicScheme:
    """Where a format's devices publish: the default prefix for a device id, and what a prefix grants."""

    default_prefix: Callable[[str], str | None]
    grants: Callable[[str], Grants]


def _no_default(_: str) -> None:
    return None


def _under(prefix: str) -> Grants:
    """Everything below the prefix: the common case (native; OwnTracks, Zebra, Impinj as configured)."""
    return Grants(publish=(prefix, f"{prefix}/#"), subscribe=(f"{prefix}/#",))


def _tasmota(topic: str) -> Grants:
    # Tasmota's default FullTopic is %prefix%/%topic%/: it publishes tele/ and stat/, and listens on cmnd/.
    return Grants(publish=(f"tele/{topic}/#", f"stat/{topic}/#"), subscribe=(f"cmnd/{topic}/#",))


def _sparkplug(group_and_node: str) -> Grants:
    # Sparkplug B 3.0, §4.1 topic namespace: spBv1.0/<group_id>/<message_type>/<edge_node_id>[/<device_id>].
    # An edge node publishes its own births, data and deaths (and its devices'), and receives commands and the
    # primary host's STATE.
    group, _, node = group_and_node.partition("/")
    if not group or not node or "/" in node:
        raise ValueError(f"a Sparkplug topic prefix is <group_id>/<edge_node_id>, got {group_and_node!r}")
    base = SPARKPLUG_NAMESPACE
    return Grants(
        publish=(
            *(f"{base}/{group}/{kind}/{node}" for kind in ("NBIRTH", "NDATA", "NDEATH")),
            *(f"{base}/{group}/{kind}/{node}/+" for kind in ("DBIRTH", "DDATA", "DDEATH")),
        ),
        subscribe=(f"{base}/{group}/NCMD/{node}", f"{base}/{group}/DCMD/{node}/+", f"{base}/STATE/+"),
    )


def _owntracks_default(device_id: str) -> str | None:
    # The decoder names a phone <user>:<device> after its topic owntracks/<user>/<device> (the app's default).
    user, sep, device = device_id.partition(":")
    return f"owntracks/{user}/{device}" if sep and user and device else None


SCHEMES: Final[Mapping[str, TopicScheme]] = {
    "native": TopicScheme(lambda device_id: f"stocktrace/{device_id}", _under),
    "owntracks": TopicScheme(_owntracks_default, _under),
    # The Sparkplug decoder names an edge node <group_id>/<edge_node_id>.
    "sparkplug-b": TopicScheme(lambda device_id: device_id, _sparkplug),
    "tasmota": TopicScheme(lambda device_id: device_id, _tasmota),
    # ESPHome's MQTT topic_prefix defaults to the node name; state, status and command topics sit under it.
    "esphome": TopicScheme(lambda device_id: device_id, _under),
}
"""Formats with a topic layout of their own. Any other format publishes under the device's
``mqtt.topic_prefix``, which must then be set (Zebra and Impinj readers, Ruuvi gateways, LoRaWAN network
servers: each is configured with a topic of the operator's choosing)."""


class AclError(Exception):
    """The registry cannot be turned into safe ACLs; the message names the device and what to set."""


@dataclass(frozen=True, slots=True)
class Client:
    """One user in the password and ACL files."""

    username: str
    grants: Grants
    device_id: str | None = None


def device_client(device: Device) -> Client | None:
    """The broker user of a device, or None for a device that does not connect itself."""
    if device.mqtt is None:
        return None
    scheme = SCHEMES.get(device.source, TopicScheme(_no_default, _under))
    prefix = device.mqtt.topic_prefix or scheme.default_prefix(device.id)
    if prefix is None:
        raise AclError(
            f"device {device.id!r} ({device.source}) has no default topics: set its mqtt.topic_prefix to "
            "where it publishes, or mqtt: null if it does not connect itself"
        )
    try:
        return Client(device.mqtt.username, scheme.grants(prefix), device.id)
    except ValueError as exc:
        raise AclError(f"device {device.id!r}: {exc}") from None


def service_client(username: str) -> Client:
    return Client(username, Grants(publish=(f"{SPARKPLUG_NAMESPACE}/+/NCMD/+",), subscribe=("#",)))


def clients(devices: Iterable[Device], service_username: str) -> list[Client]:
    """The service user and every device that connects, refusing two devices able to publish as each other."""
    found = [service_client(service_username)]
    for device in devices:
        client = device_client(device)
        if client is not None:
            if client.username == service_username:
                raise AclError(f"device {device.id!r} uses the service's user name {service_username!r}")
            found.append(client)
    _refuse_overlaps(found[1:])
    return found


def _literal_head(topic_filter: str) -> tuple[str, ...]:
    """The first (up to two) levels before any wildcard: filters overlap only if one head starts the other."""
    head: list[str] = []
    for level in topic_filter.split("/")[:2]:
        if level in ("+", "#"):
            break
        head.append(level)
    return tuple(head)


def _refuse_overlaps(device_clients: Sequence[Client]) -> None:
    # Grouped by head so that thousands of devices, each under its own prefix, are not compared pairwise.
    groups: dict[tuple[str, ...], list[tuple[str, Client]]] = {}
    for client in device_clients:
        for topic_filter in client.grants.publish:
            groups.setdefault(_literal_head(topic_filter), []).append((topic_filter, client))
    for head, members in groups.items():
        shorter = [m for n in range(len(head)) for m in groups.get(head[:n], [])]
        for index, (a, first) in enumerate(members):
            for b, second in [*members[index + 1 :], *shorter]:
                if first.username != second.username and filters_overlap(a, b):
                    raise AclError(
                        f"devices {first.device_id!r} and {second.device_id!r} could both publish on {a!r} / "
                        f"{b!r}: give them topic prefixes that do not contain each other"
                    )


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic matches both filters (MQTT 3.1.1 §4.7: '+' is one level, '#' the rest)."""
    left, right = a.split("/"), b.split("/")
    for index in range(max(len(left), len(right))):
        x = left[index] if index < len(left) else None
        y = right[index] if index < len(right) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True


def render_acl(all_clients: Sequence[Client]) -> str:
    """The ACL file: a ``user`` block per client. No line precedes the first block: anonymous gets nothing."""
    lines = [
        "# Generated by `stocktrace devices mosquitto` from the device registry; edits here are overwritten.",
        "# Reload the broker after a change: kill -HUP $(pidof mosquitto)",
    ]
    for client in all_clients:
        lines += ["", f"# device {client.device_id}" if client.device_id else "# the stocktrace service"]
        lines.append(f"user {client.username}")
        both = [topic for topic in client.grants.publish if topic in client.grants.subscribe]
        lines += [f"topic readwrite {topic}" for topic in both]
        lines += [f"topic write {topic}" for topic in client.grants.publish if topic not in both]
        lines += [f"topic read {topic}" for topic in client.grants.subscribe if topic not in both]
    return "\n".join(lines) + "\n"


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """A password hash as mosquitto_passwd writes it."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"${_HASH_ID}${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash from a Mosquitto password file."""
    try:
        _, hash_id, iterations, salt, digest = hashed.split("$")
        expected = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    return hash_id == _HASH_ID and hmac.compare_digest(base64.b64encode(expected).decode(), digest)


def parse_password_file(text: str) -> dict[str, str]:
    """User → hash from a Mosquitto password file (``user:hash`` lines)."""
    entries = {}
    for line in text.splitlines():
        user, sep, hashed = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            entries[user] = hashed
    return entries


def render_password_file(entries: Mapping[str, str]) -> str:
    return "".join(f"{user}:{hashed}\n" for user, hashed in entries.items())


def new_password() -> str:
    # 144 random bits: beyond guessing even at the modest iteration count Mosquitto uses.
    return secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The password file to write, and the passwords set this time (to show once, never stored in clear)."""

    hashes: dict[str, str]
    issued: dict[str, str]
    removed: tuple[str, ...]


def credentials(
    all_clients: Sequence[Client],
    current: Mapping[str, str],
    supplied: Mapping[str, str],
    rotate: Iterable[str] = (),
) -> Credentials:
    """Keep each user's current hash; hash the supplied passwords; generate one for a new or rotated user."""
    rotate = set(rotate)
    hashes: dict[str, str] = {}
    issued: dict[str, str] = {}
    for client in all_clients:
        user = client.username
        if user in supplied:
            hashes[user] = hash_password(supplied[user])
        elif user in current and user not in rotate:
            hashes[user] = current[user]
        else:
            issued[user] = new_password()
            hashes[user] = hash_password(issued[user])
    removed = tuple(sorted(set(current) - set(hashes)))
    return Credentials(hashes, issued, removed)
