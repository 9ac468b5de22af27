"""The registry as a file: ``stocktrace apply -f site.yaml`` makes the registry match it (``kubectl apply``).

.. code-block:: yaml

    sites:
      - id: dc-north
        timezone: Europe/Berlin
        geofence: {center: [52.52, 13.40], radius_m: 400}
        locations:                       # nested: the parent is the enclosing entry
          - id: dock-1
            kind: dock_door
    locations:                           # or flat, naming the parent
      - {id: cold-1, kind: cold_room, parent: dc-north, temperature_c: {min: 2, max: 8}}
    devices:
      - id: fx9600-dock1
        kind: rfid_reader
        source: zebra-fx
        location: dock-1
        antennas: [{port: 1, location: dock-1, side: out}, {port: 2, location: dock-1, side: in}]
      - id: freezer-probe-1              # a LoRaWAN sensor whose codec names its probe "T_probe"
        kind: sensor
        source: ttn-v3
        mqtt: null
        decoder_options:
          fields: {T_probe: temperature_c, Vbat: battery_mv}

A device's ``decoder_options`` are checked against its source format (devices/decoder_options.py); a running
``stocktrace run`` picks up a change within seconds.

Objects are matched by id: missing ones are created, differing ones updated, and each is reported as created,
updated (with the fields that changed, and what changed inside decoder_options) or unchanged, so applying
the same file twice changes nothing. Objects in the registry that the file does not mention are left alone,
as by ``kubectl apply`` without ``--prune``; with ``prune=True`` they are deleted (their readings are kept: a
pruned device that publishes is unassigned). The whole file applies in one transaction, or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeAlias, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from devices.registry import (
    MOVABLE_KINDS,
    Action,
    Change,
    Device,
    DeviceKind,
    Location,
    LocationKind,
    Place,
    Plan,
    RegistryError,
    Site,
    Statement,
    check_not_site,
    existing_places,
    upsert_device,
    upsert_location,
    upsert_site,
)

Loc: TypeAlias = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------------------------------
# The file format: the registry models, with locations nested in sites and in each other


class LocationEntry(Place):
    """A location as the file writes it: ``parent`` only at the top level, children nested under it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: LocationKind
    parent: str | None = None
    locations: list[LocationEntry] = Field(default_factory=list)

    _check_kind = field_validator("kind")(check_not_site)


class SiteEntry(Site):
    locations: list[LocationEntry] = Field(default_factory=list)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: list[SiteEntry] = Field(default_factory=list)
    locations: list[LocationEntry] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# Problems, named by their path in the file


def format_loc(loc: Loc) -> str:
    """``('sites', 0, 'geofence')`` → ``sites[0].geofence``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True, slots=True)
class Problem:
    loc: Loc
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = format_loc(self.loc) or "file"
        return f"{where}: {self.message}" + (f" (line {self.line})" if self.line else "")


class ManifestError(Exception):
    """The file is not a valid registry manifest; ``problems`` names each one by its path in the file."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed manifest with the YAML node tree, to point problems found later at their lines."""

    manifest: Manifest
    root: yaml.Node | None = None

    def locate(self, problems: Iterable[Problem]) -> list[Problem]:
        return [Problem(p.loc, p.message, p.line or _line_of(self.root, p.loc)) for p in problems]


def _line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """The line of the deepest node along ``loc`` that the file has."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        child: yaml.Node = node.value[part]
        return child
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == part:
                found: yaml.Node = value
                return found
    return None


def _pydantic_message(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field (check its spelling)"
    if error["type"] == "missing":
        return "required field is missing"
    return message


def _problem(error: Any) -> Problem:
    if error["type"] == "decoder_options":
        # The options are checked per source format as a whole; the error says which part inside them.
        return Problem((*error["loc"], *error["ctx"]["loc"]), error["ctx"]["reason"])
    return Problem(tuple(error["loc"]), _pydantic_message(error))


def parse(text: str) -> Document:
    """Read and validate a manifest; a `ManifestError` lists every problem with its path and line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ManifestError([Problem((), f"not valid YAML: {exc}", mark.line + 1 if mark else None)]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError([Problem((), "expected a mapping with sites, locations and devices", 1)])
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        raise ManifestError(Document(Manifest(), root).locate(problems)) from None
    return Document(manifest, root)


# ----------------------------------------------------------------------------------------------------
# From the nested file to the registry's flat objects


@dataclass(frozen=True, slots=True)
class Entry(Generic[M]):
    loc: Loc
    obj: M


@dataclass
class Objects:
    """Every object the file declares, in file order, each with its path."""

    sites: list[Entry[Site]] = field(default_factory=list)
    locations: list[Entry[Location]] = field(default_factory=list)
    devices: list[Entry[Device]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def of(cls, manifest: Manifest) -> Self:
        objects = cls()
        for index, site in enumerate(manifest.sites):
            objects.sites.append(Entry(("sites", index), Site(**_fields(site, exclude={"locations"}))))
            objects._add_locations(site.locations, site.id, ("sites", index))
        for index, entry in enumerate(manifest.locations):
            loc: Loc = ("locations", index)
            if entry.parent is None:
                objects.problems.append(Problem((*loc, "parent"), "a top-level location needs a parent"))
            else:
                objects._add_location(entry, entry.parent, loc)
        objects.devices = [Entry(("devices", i), device) for i, device in enumerate(manifest.devices)]
        objects._check_duplicates()
        return objects

    def _add_locations(self, entries: Sequence[LocationEntry], parent: str, loc: Loc) -> None:
        for index, entry in enumerate(entries):
            entry_loc = (*loc, "locations", index)
            if entry.parent is not None and entry.parent != parent:
                self.problems.append(
                    Problem((*entry_loc, "parent"), f"is nested under {parent!r}; drop parent or move the entry")
                )
            self._add_location(entry, parent, entry_loc)

    def _add_location(self, entry: LocationEntry, parent: str, loc: Loc) -> None:
        location = Location(**_fields(entry, exclude={"locations", "parent"}), parent=parent)
        self.locations.append(Entry(loc, location))
        self._add_locations(entry.locations, entry.id, loc)

    def _check_duplicates(self) -> None:
        places: list[Entry[Site] | Entry[Location]] = [*self.sites, *self.locations]
        self.problems += _duplicates(((e.loc, e.obj.id) for e in places), "id", "declared")
        self.problems += _duplicates(((e.loc, e.obj.id) for e in self.devices), "id", "declared")
        usernames = ((e.loc, e.obj.mqtt.username) for e in self.devices if e.obj.mqtt is not None)
        self.problems += _duplicates(usernames, "mqtt.username", "used")


def _fields(model: BaseModel, exclude: set[str]) -> dict[str, Any]:
    # Field values as they are (nested models included), not dumped to dicts and validated again.
    return {name: getattr(model, name) for name in type(model).model_fields if name not in exclude}


def _duplicates(items: Iterable[tuple[Loc, str]], what: str, verb: str) -> Iterator[Problem]:
    first: dict[str, Loc] = {}
    for loc, value in items:
        if value in first:
            yield Problem((*loc, *what.split(".")), f"{value!r} is already {verb} at {format_loc(first[value])}")
        else:
            first.setdefault(value, loc)


# ----------------------------------------------------------------------------------------------------
# References, checked against the file and the registry together before anything is written


def _check_references(objects: Objects, known: dict[str, LocationKind], where: str) -> list[Problem]:
    problems: list[Problem] = []
    for entry in objects.locations:
        if entry.obj.parent not in known:
            problems.append(_missing((*entry.loc, "parent"), entry.obj.parent, where))
    for device in objects.devices:
        problems += _check_device_references(device, known, where)
    return problems


def _check_device_references(entry: Entry[Device], known: dict[str, LocationKind], where: str) -> list[Problem]:
    device, problems = entry.obj, []
    if device.location is not None:
        if device.location not in known:
            problems.append(_missing((*entry.loc, "location"), device.location, where))
        elif device.kind is DeviceKind.GPS_TRACKER and known[device.location] not in MOVABLE_KINDS:
            problems.append(
                Problem(
                    (*entry.loc, "location"),
                    f"a gps_tracker is fixed to a vehicle or container; {device.location!r} is a "
                    f"{known[device.location].value}",
                )
            )
    for index, antenna in enumerate(device.antennas):
        if antenna.location not in known:
            problems.append(_missing((*entry.loc, "antennas", index, "location"), antenna.location, where))
    return problems


def _missing(loc: Loc, target: str, where: str) -> Problem:
    return Problem(loc, f"{target!r} is {where}")


def _parents_first(entries: list[Entry[Location]]) -> tuple[list[Entry[Location]], list[Problem]]:
    """Order locations so that each parent declared in the file is written before its children."""
    by_id = {entry.obj.id: entry for entry in entries}
    ordered: list[Entry[Location]] = []
    state: dict[str, str] = {}  # id → "visiting" | "done"
    problems: list[Problem] = []

    def visit(entry: Entry[Location]) -> None:
        if state.get(entry.obj.id) == "done":
            return
        if state.get(entry.obj.id) == "visiting":
            problems.append(Problem((*entry.loc, "parent"), f"location {entry.obj.id!r} would be inside itself"))
            return
        state[entry.obj.id] = "visiting"
        parent = by_id.get(entry.obj.parent)
        if parent is not None:
            visit(parent)
        state[entry.obj.id] = "done"
        ordered.append(entry)

    for entry in entries:
        visit(entry)
    return ordered, problems


# ----------------------------------------------------------------------------------------------------
# Apply


def apply(document: Document, *, prune: bool = False) -> Plan[list[Change]]:
    """Make the registry match the file: a plan to run in one transaction (roll it back for a dry run)."""
    objects = Objects.of(document.manifest)
    existing = yield from existing_places()
    declared = {e.obj.id: LocationKind.SITE for e in objects.sites} | {e.obj.id: e.obj.kind for e in objects.locations}
    # With --prune, what the file does not declare is about to go, so it cannot be referred to.
    known, where = (
        (declared, "not in this file (with --prune, what the file does not declare is deleted)")
        if prune
        else (existing | declared, "neither in this file nor in the registry")
    )
    locations, loops = _parents_first(objects.locations)
    problems = objects.problems + _check_references(objects, known, where) + loops
    if problems:
        raise ManifestError(document.locate(problems))
    changes: list[Change] = []
    for site in objects.sites:
        changes.append((yield from _located(document, site.loc, upsert_site(site.obj))))
    for location in locations:
        changes.append((yield from _located(document, location.loc, upsert_location(location.obj))))
    for device in objects.devices:
        changes.append((yield from _located(document, device.loc, upsert_device(device.obj))))
    if prune:
        changes += yield from _prune(set(declared), {e.obj.id for e in objects.devices})
    return changes


def _located(document: Document, loc: Loc, plan: Plan[Change]) -> Plan[Change]:
    """Run one object's write; a refusal becomes a problem at that object's path."""
    try:
        return (yield from plan)
    except RegistryError as exc:
        names = exc.field.replace("[", ".").replace("]", "").split(".") if exc.field else []
        parts = tuple(int(name) if name.isdigit() else name for name in names)
        raise ManifestError(document.locate([Problem((*loc, *parts), exc.message)])) from exc


def _prune(places: set[str], devices: set[str]) -> Plan[list[Change]]:
    deleted = yield Statement("delete from devices where id <> all(%(keep)s) returning id", {"keep": sorted(devices)})
    changes = [Change("device", row["id"], Action.DELETED) for row in sorted(deleted, key=lambda r: r["id"])]
    doomed = yield Statement(
        "with recursive tree as ("
        "  select id, kind, 0 as depth from locations where parent_id is null"
        "  union all"
        "  select l.id, l.kind, t.depth + 1 from locations l join tree t on l.parent_id = t.id"
        ") select id, kind from tree where id <> all(%(keep)s) order by depth desc, id",
        {"keep": sorted(places)},
    )
    for row in doomed:
        # Deepest first, so that no location is deleted while something is still inside it.
        yield Statement("delete from locations where id = %(id)s", {"id": row["id"]})
        changes.append(Change("site" if row["kind"] == LocationKind.SITE else "location", row["id"], Action.DELETED))
    return changes


def summarize(changes: Sequence[Change]) -> str:
    """``2 created, 1 updated, 5 unchanged``: the last line of an apply."""
    counts = {action: sum(change.action is action for change in changes) for action in Action}
    return ", ".join(f"{count} {action.value}" for action, count in counts.items() if count) or "nothing to apply"
