"""GS1 identifiers the simulated tags carry: GTIN check digits, SGTIN-96 and SSCC-96 EPC binary encodings.

Written from the GS1 EPC Tag Data Standard (TDS 2.1): §14.5.1 (SGTIN-96) and §14.5.2 (SSCC-96) give the
bit layouts, Tables 14-2 and 14-5 the partition tables, and GS1 General Specifications §7.9 the check digit.
The simulator encodes on its own so that a bug in stocktrace's decoder cannot be mirrored here.
"""

from __future__ import annotations

from typing import Final

SGTIN96_HEADER: Final = 0x30
SSCC96_HEADER: Final = 0x31
SGTIN_SERIAL_BITS: Final = 38

# TDS Table 14-2 (SGTIN): partition → (company prefix digits, company prefix bits, item reference bits).
_SGTIN_PARTITIONS: Final = {
    0: (12, 40, 4), 1: (11, 37, 7), 2: (10, 34, 10), 3: (9, 30, 14), 4: (8, 27, 17), 5: (7, 24, 20), 6: (6, 20, 24),
}  # fmt: skip
# TDS Table 14-5 (SSCC): partition → (company prefix digits, company prefix bits, serial reference bits).
_SSCC_PARTITIONS: Final = {
    0: (12, 40, 18), 1: (11, 37, 21), 2: (10, 34, 24), 3: (9, 30, 28), 4: (8, 27, 31), 5: (7, 24, 34), 6: (6, 20, 38),
}  # fmt: skip


class Filter:
    """TDS §10.1 filter values: what kind of object the tag is on, so readers can select."""

    POS_ITEM: Final = 1
    FULL_CASE: Final = 2
    UNIT_LOAD: Final = 6
    SSCC_LOGISTIC_UNIT: Final = 2


def gtin_check_digit(digits: str) -> int:
    """The GS1 mod-10 check digit of a digit string (GTIN, SSCC, GLN without their check digit)."""
    if not digits.isdigit():
        raise ValueError(f"{digits!r} is not a string of digits")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def _partition(table: dict[int, tuple[int, int, int]], company_prefix: str) -> tuple[int, int, int]:
    for partition, (digits, prefix_bits, rest_bits) in table.items():
        if digits == len(company_prefix):
            return partition, prefix_bits, rest_bits
    raise ValueError(f"company prefix {company_prefix!r} must have 6 to 12 digits")


def sgtin96(gtin14: str, company_prefix: str, serial: int, filter_value: int = Filter.POS_ITEM) -> str:
    """The SGTIN-96 EPC of one trade item, as 24 upper-case hex digits.

    The item reference field holds the GTIN's indicator digit followed by its item reference (TDS §7.1.2).
    """
    if len(gtin14) != 14 or not gtin14.isdigit():
        raise ValueError(f"GTIN {gtin14!r} must have 14 digits")
    if gtin14[1 : 1 + len(company_prefix)] != company_prefix:
        raise ValueError(f"GTIN {gtin14} does not carry company prefix {company_prefix}")
    if not 0 <= serial < 1 << SGTIN_SERIAL_BITS:
        raise ValueError(f"SGTIN-96 serial {serial} does not fit in {SGTIN_SERIAL_BITS} bits")
    partition, prefix_bits, item_bits = _partition(_SGTIN_PARTITIONS, company_prefix)
    item_reference = int(gtin14[0] + gtin14[1 + len(company_prefix) : 13])
    value = SGTIN96_HEADER
    value = (value << 3) | filter_value
    value = (value << 3) | partition
    value = (value << prefix_bits) | int(company_prefix)
    value = (value << item_bits) | item_reference
    value = (value << SGTIN_SERIAL_BITS) | serial
    return f"{value:024X}"


def sscc96(
    company_prefix: str, serial_reference: int, extension: int = 0, filter_value: int = Filter.SSCC_LOGISTIC_UNIT
) -> str:
    """The SSCC-96 EPC of one logistic unit (pallet), as 24 upper-case hex digits; 24 bits stay reserved."""
    partition, prefix_bits, serial_bits = _partition(_SSCC_PARTITIONS, company_prefix)
    serial_digits = 17 - len(company_prefix) - 1
    if not 0 <= serial_reference < 10**serial_digits or not 0 <= extension <= 9:
        raise ValueError(f"SSCC serial reference {serial_reference} does not fit {serial_digits} digits")
    value = SSCC96_HEADER
    value = (value << 3) | filter_value
    value = (value << 3) | partition
    value = (value << prefix_bits) | int(company_prefix)
    value = (value << serial_bits) | int(f"{extension}{serial_reference:0{serial_digits}d}")
    value <<= 24
    return f"{value:024X}"


def sscc18(company_prefix: str, serial_reference: int, extension: int = 0) -> str:
    """The 18-digit SSCC (AI 00) of the same logistic unit, with its check digit."""
    serial_digits = 17 - len(company_prefix) - 1
    body = f"{extension}{company_prefix}{serial_reference:0{serial_digits}d}"
    return body + str(gtin_check_digit(body))


def decode_sgtin96(epc_hex: str) -> tuple[int, str, int, int]:
    """(filter, company prefix, item reference with indicator, serial) of an SGTIN-96; for checking our own tags."""
    value = int(epc_hex, 16)
    if len(epc_hex) != 24 or value >> 88 != SGTIN96_HEADER:
        raise ValueError(f"{epc_hex!r} is not an SGTIN-96")
    filter_value = (value >> 85) & 0b111
    partition = (value >> 82) & 0b111
    digits, prefix_bits, item_bits = _SGTIN_PARTITIONS[partition]
    company = (value >> (SGTIN_SERIAL_BITS + item_bits)) & ((1 << prefix_bits) - 1)
    item = (value >> SGTIN_SERIAL_BITS) & ((1 << item_bits) - 1)
    serial = value & ((1 << SGTIN_SERIAL_BITS) - 1)
    return filter_value, f"{company:0{digits}d}", item, serial
