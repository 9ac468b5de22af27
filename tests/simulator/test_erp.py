"""The simulated ERP's book exports, imported into the real database as `POST /inventory/book` imports them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from click.testing import CliRunner

from alerts.rules_config import parse_rules
from devices import manifest as registry_manifest
from devices import registry
from simulator.cli import simulate
from simulator.erp import SOURCE, DatabaseBook
from simulator.manifest import manifest_yaml
from simulator.publisher import MemorySink
from simulator.run import run
from simulator.world import load_scenario

SMALL = Path(__file__).parent / "small.yaml"
WAREHOUSE = Path(__file__).parents[2] / "simulator" / "scenarios" / "warehouse.yaml"


class RecordingBook(DatabaseBook):
    """A DatabaseBook that also keeps what it sent last."""

    last: dict[tuple[str, str], int]

    def __call__(self, book: Mapping[tuple[str, str], int], t: float) -> None:
        self.last = dict(book)
        super().__call__(book, t)


def test_the_erp_book_is_imported_every_quarter_hour_and_cleared_lines_go_to_zero(
    dsn: str, db: psycopg.Connection[Any]
) -> None:
    scenario = load_scenario(SMALL)
    with psycopg.connect(dsn) as conn, conn.transaction():
        registry.run(conn, registry_manifest.apply(registry_manifest.parse(manifest_yaml(scenario))))
    book = RecordingBook(dsn)

    result = run(scenario, mqtt=None, sink=MemorySink(), duration_s=70 * 60, book=book, book_every_s=900)

    imports = db.execute("select source, as_of from book_imports order by id").fetchall()
    start = datetime.fromtimestamp(result.started_at, UTC)
    assert [(s, (a - start).total_seconds()) for s, a in imports] == [(SOURCE, k * 900.0) for k in range(5)]
    assert book.rejected == 0
    stored = db.execute("select location_id, gtin, quantity from inventory_book where quantity > 0").fetchall()
    assert {(loc, gtin): units for loc, gtin, units in stored} == book.last


def test_the_manifest_comes_with_rules_for_serialised_skus_and_stock_locations(tmp_path: Path) -> None:
    target = tmp_path / "site.yaml"
    outcome = CliRunner().invoke(simulate, ["--scenario", str(WAREHOUSE), "--manifest", str(target)])
    assert outcome.exit_code == 0, outcome.output

    rules_file = tmp_path / "site.rules.yaml"
    config = parse_rules(rules_file.read_text())
    section = config.inventory_variance
    serialised = {m.gtin for m, fields in section.overrides if fields == {"absolute_units": 1}}
    assert serialised == {"04012345000115", "04012345000351"}  # insulin pens and vaccine vials
    passed_through = {m.location for m, fields in section.overrides if fields == {"enabled": False}}
    assert {"berlin-receiving", "berlin-shipping", "berlin-dock-1", "hamburg-receiving"} <= passed_through
    assert not passed_through & {"berlin-cold-room", "berlin-freezer", "berlin-a-01", "hamburg-a-01"}
    assert section.params.units == 2  # every other SKU keeps the default
    assert yaml.safe_load(rules_file.read_text())["rules"].keys() == {"inventory_variance"}
