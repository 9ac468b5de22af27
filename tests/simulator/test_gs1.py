"""The simulator's own GS1 encoder against the standard's vector and stocktrace's independent decoder."""

from __future__ import annotations

import pytest

from devices.epc import identify
from simulator.gs1 import Filter, decode_sgtin96, gtin_check_digit, sgtin96, sscc18, sscc96


def test_tds_example_sgtin96() -> None:
    # GS1 EPC TDS worked example: urn:epc:tag:sgtin-96:3.0614141.812345.6789
    assert sgtin96("80614141123458", "0614141", 6789, filter_value=3) == "3074257BF7194E4000001A85"
    assert decode_sgtin96("3074257BF7194E4000001A85") == (3, "0614141", 812345, 6789)


GTINS = [("0614141", "80614141123458"), ("4012345", "04012345000115"), ("061414", "00614141000012"),
         ("061414112345", "00614141123452")]  # fmt: skip


@pytest.mark.parametrize(("prefix", "gtin"), GTINS)
@pytest.mark.parametrize("serial", [0, 1, 6789, 2**38 - 1])
def test_sgtin96_round_trips_through_stocktrace(prefix: str, gtin: str, serial: int) -> None:
    identity = identify(sgtin96(gtin, prefix, serial, Filter.POS_ITEM))
    assert (identity.scheme, identity.gtin, identity.serial) == ("sgtin", gtin, str(serial))
    assert (identity.company_prefix, identity.filter_value) == (prefix, Filter.POS_ITEM)


@pytest.mark.parametrize(("prefix", "serial", "extension"), [("4012345", 17, 0), ("0614141", 123456789, 1)])
def test_sscc96_round_trips_through_stocktrace(prefix: str, serial: int, extension: int) -> None:
    identity = identify(sscc96(prefix, serial, extension))
    assert identity.scheme == "sscc"
    assert identity.sscc == sscc18(prefix, serial, extension)
    assert identity.filter_value == Filter.SSCC_LOGISTIC_UNIT


def test_check_digit() -> None:
    assert gtin_check_digit("8061414112345") == 8
    assert sscc18("0614141", 123456789, 1) == "106141411234567897"


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit in 38 bits"):
        sgtin96("80614141123458", "0614141", 2**38)
    with pytest.raises(ValueError, match="does not carry company prefix"):
        sgtin96("80614141123458", "4012345", 1)
