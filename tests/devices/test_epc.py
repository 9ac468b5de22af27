"""GS1 EPC identity against the EPC Tag Data Standard (TDS).

The SGTIN-96 and SGTIN-198 vectors are the binary encodings TDS Appendix E works through. For the other
schemes the TDS gives example URIs (TDS §6.3: urn:epc:id:sscc:0614141.1234567890, urn:epc:id:sgln:
0614141.12345.400, urn:epc:id:grai:0614141.12345.400, urn:epc:id:giai:0614141.12345400); their binary
form is packed here, independently of the code under test, from the TDS §14.5 coding tables, and the GS1
check digits are computed here too.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from devices.cli import COMMANDS
from devices.epc import Identity, identify

# TDS §14.5 partition tables: partition -> (company prefix bits, its digits, second field bits, its digits).
SGTIN_PARTITIONS = {5: (24, 7, 20, 6), 0: (40, 12, 4, 1), 6: (20, 6, 24, 7)}
SSCC_PARTITIONS = {5: (24, 7, 34, 10)}
SGLN_PARTITIONS = {5: (24, 7, 17, 5)}
GRAI_PARTITIONS = {5: (24, 7, 20, 5)}
GIAI96_PARTITIONS = {5: (24, 7, 58, 18)}
GIAI202_PARTITIONS = {5: (24, 7, 164, 23)}


def check_digit(digits: str) -> str:
    """GS1 General Specifications §7.9.1: weights 3 and 1 alternate from the rightmost digit."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str((10 - total % 10) % 10)


def pack(*fields: tuple[int, int], padded_to: int = 0) -> str:
    """Concatenate (value, bits) fields into hex, zero-padded on the right to ``padded_to`` bits."""
    value, length = 0, 0
    for field, bits in fields:
        assert field < 1 << bits
        value, length = value << bits | field, length + bits
    total = max(padded_to, -(-length // 4) * 4)
    return f"{value << (total - length):0{total // 4}X}"


def string7(text: str, bits: int) -> tuple[int, int]:
    """TDS §14.3.2 String encoding: 7-bit ISO 646 characters, zero-filled to the field's width."""
    value = 0
    for char in text:
        value = value << 7 | ord(char)
    return value << (bits - 7 * len(text)), bits


def partitioned(table: dict[int, tuple[int, int, int, int]], prefix: str, second: int) -> tuple[int, int]:
    partition = next(p for p, row in table.items() if row[1] == len(prefix))
    prefix_bits, _, second_bits, _ = table[partition]
    value = (partition << prefix_bits | int(prefix)) << second_bits | second
    return value, 3 + prefix_bits + second_bits


# TDS Appendix E: urn:epc:tag:sgtin-96:3.0614141.812345.6789 and
# urn:epc:tag:sgtin-198:3.0614141.712345.32a%2Fb
SGTIN_96 = "3074257BF7194E4000001A85"
SGTIN_198 = "3674257BF6B7A659B2C2BF1000000000000000000000000000"


def test_sgtin_96_tds_appendix_e() -> None:
    identity = identify(SGTIN_96)
    assert identity == Identity(
        scheme="sgtin",
        uri="urn:epc:id:sgtin:0614141.812345.6789",
        tag_uri="urn:epc:tag:sgtin-96:3.0614141.812345.6789",
        gtin="8061414112345" + check_digit("8061414112345"),
        serial="6789",
        company_prefix="0614141",
        filter_value=3,
        raw_hex=SGTIN_96,
    )
    assert identity.gtin == "80614141123458"


def test_sgtin_96_packed_from_the_coding_table_matches_appendix_e() -> None:
    assert pack((0x30, 8), (3, 3), partitioned(SGTIN_PARTITIONS, "0614141", 812345), (6789, 38)) == SGTIN_96


def test_sgtin_198_tds_appendix_e_keeps_the_serial_unescaped() -> None:
    identity = identify(SGTIN_198)
    assert identity.uri == "urn:epc:id:sgtin:0614141.712345.32a%2Fb"
    assert identity.tag_uri == "urn:epc:tag:sgtin-198:3.0614141.712345.32a%2Fb"
    assert identity.gtin == "7061414112345" + check_digit("7061414112345")
    assert identity.serial == "32a/b"
    assert identity.filter_value == 3
    packed = pack((0x36, 8), (3, 3), partitioned(SGTIN_PARTITIONS, "0614141", 712345), string7("32a/b", 140))
    assert packed == SGTIN_198


def test_sgtin_198_as_whole_memory_words_decodes_the_same() -> None:
    # 198 bits occupy 13 words of EPC memory; readers report all 52 hex digits.
    assert identify(SGTIN_198 + "00").uri == identify(SGTIN_198).uri


@pytest.mark.parametrize(
    ("prefix", "item", "gtin_body"),
    [("061414112345", 1, "1061414112345"), ("061414", 1234567, "1061414234567")],
    ids=["partition-0", "partition-6"],
)
def test_sgtin_96_other_partitions(prefix: str, item: int, gtin_body: str) -> None:
    digits = SGTIN_PARTITIONS[next(p for p, r in SGTIN_PARTITIONS.items() if r[1] == len(prefix))][3]
    epc = pack((0x30, 8), (1, 3), partitioned(SGTIN_PARTITIONS, prefix, item), (1, 38))
    identity = identify(epc)
    assert identity.company_prefix == prefix
    assert identity.uri == f"urn:epc:id:sgtin:{prefix}.{item:0{digits}d}.1"
    assert identity.gtin == gtin_body + check_digit(gtin_body)
    assert identity.filter_value == 1


def test_sscc_96() -> None:
    epc = pack((0x31, 8), (3, 3), partitioned(SSCC_PARTITIONS, "0614141", 1234567890), (0, 24))
    identity = identify(epc)
    assert identity.scheme == "sscc"
    assert identity.uri == "urn:epc:id:sscc:0614141.1234567890"
    assert identity.tag_uri == "urn:epc:tag:sscc-96:3.0614141.1234567890"
    # SSCC-18: extension digit (first digit of the serial reference), company prefix, the rest, check digit.
    assert identity.sscc == "10614141234567890" + check_digit("10614141234567890")
    assert (identity.gtin, identity.serial, identity.company_prefix) == (None, None, "0614141")


def test_sgln_96() -> None:
    epc = pack((0x32, 8), (3, 3), partitioned(SGLN_PARTITIONS, "0614141", 12345), (400, 41))
    identity = identify(epc)
    assert identity.uri == "urn:epc:id:sgln:0614141.12345.400"
    assert identity.tag_uri == "urn:epc:tag:sgln-96:3.0614141.12345.400"
    assert identity.gln == "061414112345" + check_digit("061414112345")
    assert identity.extension == "400"


def test_sgln_96_extension_zero_means_no_extension() -> None:
    epc = pack((0x32, 8), (0, 3), partitioned(SGLN_PARTITIONS, "0614141", 12345), (0, 41))
    identity = identify(epc)
    assert identity.uri == "urn:epc:id:sgln:0614141.12345.0"
    assert identity.gln == "0614141123452"
    assert identity.extension is None


def test_sgln_195_alphanumeric_extension() -> None:
    epc = pack(
        (0x39, 8),
        (3, 3),
        partitioned(SGLN_PARTITIONS, "0614141", 12345),
        string7("32a/b", 140),
        padded_to=208,
    )
    identity = identify(epc)
    assert identity.uri == "urn:epc:id:sgln:0614141.12345.32a%2Fb"
    assert identity.tag_uri == "urn:epc:tag:sgln-195:3.0614141.12345.32a%2Fb"
    assert (identity.gln, identity.extension) == ("0614141123452", "32a/b")


def test_grai_96() -> None:
    epc = pack((0x33, 8), (3, 3), partitioned(GRAI_PARTITIONS, "0614141", 12345), (400, 38))
    identity = identify(epc)
    assert identity.uri == "urn:epc:id:grai:0614141.12345.400"
    assert identity.tag_uri == "urn:epc:tag:grai-96:3.0614141.12345.400"
    # AI (8003): a leading 0, company prefix and asset type, check digit; then the serial.
    assert identity.grai == "0061414112345" + check_digit("061414112345")
    assert identity.serial == "400"


def test_grai_170_alphanumeric_serial() -> None:
    epc = pack((0x37, 8), (2, 3), partitioned(GRAI_PARTITIONS, "0614141", 12345), string7("32a/b", 112))
    identity = identify(epc)
    assert identity.uri == "urn:epc:id:grai:0614141.12345.32a%2Fb"
    assert (identity.grai, identity.serial, identity.filter_value) == ("00614141123452", "32a/b", 2)


def test_giai_96() -> None:
    epc = pack((0x34, 8), (3, 3), partitioned(GIAI96_PARTITIONS, "0614141", 12345400))
    identity = identify(epc)
    assert identity.uri == "urn:epc:id:giai:0614141.12345400"
    assert identity.tag_uri == "urn:epc:tag:giai-96:3.0614141.12345400"
    assert identity.giai == "061414112345400"


def test_giai_202_alphanumeric_reference() -> None:
    prefix_bits, _, reference_bits, _ = GIAI202_PARTITIONS[5]
    field = (5 << prefix_bits | 614141) << reference_bits | string7("32a/b", reference_bits)[0]
    epc = pack((0x38, 8), (3, 3), (field, 3 + prefix_bits + reference_bits), padded_to=208)
    identity = identify(epc)
    assert identity.uri == "urn:epc:id:giai:0614141.32a%2Fb"
    assert identity.giai == "061414132a/b"


@pytest.mark.parametrize(
    ("epc", "reason"),
    [
        ("E2801160600002084A5B1A2C", "TID"),  # Impinj Monza TID: allocation class E2
        ("3574257BF7194E4000001A85", "header 35"),  # GID-96: an EPC, but not a GS1 key
        ("AB12CD34", "header AB"),
        (SGTIN_96 + "00", "needs 24 hex digits, got 26"),
        (SGTIN_96[:-1], "needs 24 hex digits, got 23"),
        (SGTIN_198[:40], "needs 50 to 52 hex digits"),
        (SGTIN_198 + "01", "non-zero bits"),
        ("307C257BF7194E4000001A85", "partition"),  # partition 7 does not exist
        ("3077FFFFFF194E4000001A85", "not a valid SGTIN-96"),  # company prefix 16777215 has 8 digits
        ("hello, world", "not a hexadecimal EPC"),
        ("", "not a hexadecimal EPC"),
    ],
)
def test_non_gs1_input_is_unknown_never_an_error(epc: str, reason: str) -> None:
    identity = identify(epc)
    assert identity.scheme == "unknown"
    assert identity.reason is not None
    assert reason in identity.reason
    assert identity.raw_hex == "".join(epc.split()).upper()
    assert (identity.uri, identity.gtin, identity.filter_value) == (None, None, None)


def test_hex_is_normalised_and_decoded_once() -> None:
    assert identify(" 0x" + SGTIN_96.lower()).raw_hex == SGTIN_96
    assert identify("3074 257B F719 4E40 0000 1A85").uri == "urn:epc:id:sgtin:0614141.812345.6789"
    assert identify(SGTIN_96) is identify(SGTIN_96)


def test_to_json_has_every_field() -> None:
    document = identify(SGTIN_96).to_json()
    assert document["gtin"] == "80614141123458"
    assert document["sscc"] is None
    assert set(document) == set(Identity.__dataclass_fields__)
    assert json.loads(json.dumps(document)) == document


def test_cli_prints_one_json_object_per_epc() -> None:
    command = next(c for c in COMMANDS if c.name == "epc")
    result = CliRunner().invoke(command, [SGTIN_96, "E2801160600002084A5B1A2C"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["scheme"] for line in lines] == ["sgtin", "unknown"]
    assert lines[0]["uri"] == "urn:epc:id:sgtin:0614141.812345.6789"


def test_cli_requires_an_epc() -> None:
    command = next(c for c in COMMANDS if c.name == "epc")
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 2
    assert "Missing argument" in result.output
