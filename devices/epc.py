"""GS1 identity of an RFID tag: a binary EPC (as hex) decoded per the GS1 EPC Tag Data Standard (TDS 2.x).

Supported coding schemes (TDS §14, header values in Table 14-1): SGTIN-96/198, SSCC-96, SGLN-96/195,
GRAI-96/170 and GIAI-96/202. The bit-level decoding is done by ``epcpy``, which decodes the TDS worked
examples (Appendix E) correctly; around it this module does what epcpy does not: it keeps the filter
value (epcpy drops it), enforces the exact length of each coding scheme (epcpy accepts trailing bits a 96-bit
EPC cannot have), builds the tag URI itself (epcpy's SSCC tag URI is malformed), keeps the GRAI's leading
zero (epcpy's GRAI key lacks it) and reads an SGLN extension of ``0`` as "no extension".

Anything else (other EPC headers, TIDs, wrong lengths, not hex at all) is an ``Identity`` with scheme
``unknown`` and the raw hex: a tag we cannot decode is still a tag we saw, never an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, NamedTuple

from epcpy.epc_schemes.base_scheme import TagEncodable
from epcpy.epc_schemes.giai import GIAI
from epcpy.epc_schemes.grai import GRAI
from epcpy.epc_schemes.sgln import SGLN
from epcpy.epc_schemes.sgtin import SGTIN
from epcpy.epc_schemes.sscc import SSCC
from epcpy.utils.common import ConvertException
from epcpy.utils.parsers import hex_to_tag_encodable

UNKNOWN: Final = "unknown"
_HEX: Final = frozenset("0123456789ABCDEF")
# TDS §6.3 escapes these characters in URI components; GS1 keys and serials carry the plain characters.
_URI_ESCAPES: Final = {"%22": '"', "%25": "%", "%26": "&", "%2F": "/", "%3C": "<", "%3E": ">", "%3F": "?"}
# ISO/IEC 15963 allocation class E2 starts a Gen2 TID (EPCglobal class identifier), not an EPC.
_TID_CLASS: Final = "E2"


class _Coding(NamedTuple):
    scheme: str
    name: str
    bits: int


# TDS Table 14-1: the 8-bit header selects the coding scheme and so the EPC's length in bits.
_CODINGS: Final[Mapping[str, _Coding]] = {
    "30": _Coding("sgtin", "sgtin-96", 96),
    "36": _Coding("sgtin", "sgtin-198", 198),
    "31": _Coding("sscc", "sscc-96", 96),
    "32": _Coding("sgln", "sgln-96", 96),
    "39": _Coding("sgln", "sgln-195", 195),
    "33": _Coding("grai", "grai-96", 96),
    "37": _Coding("grai", "grai-170", 170),
    "34": _Coding("giai", "giai-96", 96),
    "38": _Coding("giai", "giai-202", 202),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """What an EPC identifies: only its scheme's fields are set; ``unknown`` sets raw_hex and reason."""

    scheme: str
    """``sgtin``, ``sscc``, ``sgln``, ``grai``, ``giai`` or ``unknown``."""
    uri: str | None = None
    """The pure-identity URI, e.g. ``urn:epc:id:sgtin:0614141.812345.6789``."""
    tag_uri: str | None = None
    """The tag URI with coding scheme and filter, e.g. ``urn:epc:tag:sgtin-96:3.0614141.812345.6789``."""
    gtin: str | None = None
    """GTIN-14 of an SGTIN."""
    serial: str | None = None
    """Serial of an SGTIN or GRAI, unescaped."""
    sscc: str | None = None
    """SSCC-18."""
    gln: str | None = None
    """GLN-13 of an SGLN."""
    extension: str | None = None
    """GLN extension of an SGLN, ``None`` when the location has none."""
    grai: str | None = None
    """The 14-digit GRAI (leading 0, company prefix, asset type, check digit) without its serial."""
    giai: str | None = None
    """The GIAI: company prefix and individual asset reference."""
    company_prefix: str | None = None
    filter_value: int | None = None
    raw_hex: str
    """The EPC as upper-case hex, as read."""
    reason: str | None = None
    """Why an EPC is ``unknown``."""

    def to_json(self) -> dict[str, Any]:
        """The identity as a JSON-ready dict, every field present."""
        return asdict(self)


@functools.lru_cache(maxsize=65_536)
def identify(epc_hex: str) -> Identity:
    """Decode one EPC given as hex (case, whitespace and a ``0x`` prefix do not matter); never raises."""
    raw = _normalise(epc_hex)
    if not raw or not _HEX.issuperset(raw):
        return _unknown(raw, "not a hexadecimal EPC")
    coding = _CODINGS.get(raw[:2])
    if coding is None:
        return _unknown(raw, _unknown_header_reason(raw))
    problem = _length_problem(raw, coding)
    if problem:
        return _unknown(raw, problem)
    try:
        decoded = hex_to_tag_encodable(raw)
    except ConvertException as exc:
        return _unknown(raw, f"not a valid {coding.name.upper()}: {exc}")
    return _identity(raw, coding, decoded)


def _normalise(epc_hex: str) -> str:
    text = "".join(epc_hex.split()).upper()
    return text[2:] if text.startswith("0X") else text


def _unknown(raw: str, reason: str) -> Identity:
    return Identity(scheme=UNKNOWN, raw_hex=raw, reason=reason)


def _unknown_header_reason(raw: str) -> str:
    if raw.startswith(_TID_CLASS):
        return "a tag identifier (TID, allocation class E2), not an EPC"
    return f"header {raw[:2]} is not an SGTIN, SSCC, SGLN, GRAI or GIAI coding scheme"


def _length_problem(raw: str, coding: _Coding) -> str | None:
    # Readers report whole 16-bit words of EPC memory (Gen2 PC length), so a 198-bit SGTIN may arrive as
    # 50 or 52 hex digits; the bits past the EPC must then be zero. A 96-bit EPC is exactly 24 digits.
    shortest, longest = -(-coding.bits // 4), -(-coding.bits // 16) * 4
    if not shortest <= len(raw) <= longest:
        wanted = str(shortest) if shortest == longest else f"{shortest} to {longest}"
        return f"{coding.name.upper()} needs {wanted} hex digits, got {len(raw)}"
    padding = len(raw) * 4 - coding.bits
    if int(raw, 16) & ((1 << padding) - 1):
        return f"{coding.name.upper()} has non-zero bits after its {coding.bits} bits"
    return None


def _identity(raw: str, coding: _Coding, decoded: TagEncodable) -> Identity:
    uri: str = decoded.epc_uri
    body = uri.split(":", 4)[4]
    filter_value = int(raw[2:4], 16) >> 5  # TDS §14.5 coding tables: the 3 bits after the header
    keys = _KEYS[coding.scheme](decoded, body)
    return Identity(
        scheme=coding.scheme,
        uri=uri,
        tag_uri=f"urn:epc:tag:{coding.name}:{filter_value}.{body}",
        company_prefix=body.split(".", 1)[0],
        filter_value=filter_value,
        raw_hex=raw,
        **keys,
    )


def _unescape(component: str) -> str:
    for escaped, plain in _URI_ESCAPES.items():
        component = component.replace(escaped, plain)
    return component


def _sgtin_keys(decoded: TagEncodable, body: str) -> dict[str, str | None]:
    assert isinstance(decoded, SGTIN)
    return {"gtin": decoded.gtin(), "serial": _unescape(body.split(".", 2)[2])}


def _sscc_keys(decoded: TagEncodable, body: str) -> dict[str, str | None]:
    assert isinstance(decoded, SSCC)
    return {"sscc": decoded.gs1_key()}


def _sgln_keys(decoded: TagEncodable, body: str) -> dict[str, str | None]:
    assert isinstance(decoded, SGLN)
    # TDS SGLN: an EPC extension of "0" stands for a GLN without extension (no AI 254).
    extension = _unescape(body.split(".", 2)[2])
    return {"gln": decoded.gs1_key(), "extension": None if extension == "0" else extension}


def _grai_keys(decoded: TagEncodable, body: str) -> dict[str, str | None]:
    assert isinstance(decoded, GRAI)
    # AI (8003) is "0" + company prefix + asset type + check digit (14 digits), then the serial.
    element = decoded.gs1_element_string().removeprefix("(8003)")
    return {"grai": element[:14], "serial": element[14:] or None}


def _giai_keys(decoded: TagEncodable, body: str) -> dict[str, str | None]:
    assert isinstance(decoded, GIAI)
    return {"giai": decoded.gs1_key()}


_KEYS: Final[Mapping[str, Callable[[TagEncodable, str], dict[str, str | None]]]] = {
    "sgtin": _sgtin_keys,
    "sscc": _sscc_keys,
    "sgln": _sgln_keys,
    "grai": _grai_keys,
    "giai": _giai_keys,
}
