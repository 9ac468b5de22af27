"""Vendor payload decoders: one module per format, each a pure function from a raw message to readings.

The table below is the seam between transport and format: ingest looks a decoder up by the name a topic
filter is routed to (``STOCKTRACE_ROUTES``); the native format needs no route.
"""

from collections.abc import Callable, Mapping
from typing import Final, TypeAlias

from devices.decoders import native
from devices.decoders.errors import DecodeError
from devices.reading import RawMessage, Reading

Decoder: TypeAlias = Callable[[RawMessage], list[Reading]]

DECODERS: Final[Mapping[str, Decoder]] = {
    "native": native.decode,
}

__all__ = ["DECODERS", "DecodeError", "Decoder"]
