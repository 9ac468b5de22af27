"""``stocktrace epc``: decode EPCs the way tracking will see them, to check tags before wiring a reader."""

from __future__ import annotations

import json

import click

from devices.epc import identify


@click.command("epc")
@click.argument("epc_hex", nargs=-1, required=True, metavar="HEX [HEX ...]")
def epc(epc_hex: tuple[str, ...]) -> None:
    """Print the GS1 identity of each EPC (hex, as a reader reports it) as one JSON object per line.

    SGTIN, SSCC, SGLN, GRAI and GIAI EPCs give their pure-identity URI and GS1 keys (GTIN-14 and serial,
    SSCC-18, GLN-13 and extension, GRAI, GIAI); anything else, such as a TID, prints with scheme
    "unknown", the raw hex and the reason.

    \b
    Example:
      stocktrace epc 3074257BF7194E4000001A85
      {"scheme": "sgtin", "uri": "urn:epc:id:sgtin:0614141.812345.6789", ..., "gtin": "80614141123458", ...}
    """
    for value in epc_hex:
        click.echo(json.dumps(identify(value).to_json()))
