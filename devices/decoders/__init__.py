"""Vendor payload decoders: one module per format, each a pure function from a raw message to readings.

The table below is the seam between transport and format: ingest looks a decoder up by the name a topic
filter is routed to (``STOCKTRACE_ROUTES``); the native format needs no route.
"""

from collections.abc import Callable, Mapping
from typing import Final, TypeAlias

from devices.decoders import impinj, native, owntracks, ruuvi, zebra_fx
from devices.decoders.errors import DecodeError
from devices.decoders.esphome import ESPHome
from devices.decoders.lorawan import ChirpStack, TheThingsStack
from devices.decoders.sparkplug import SparkplugDecoder
from devices.decoders.tasmota import Tasmota
from devices.reading import RawMessage, Reading

Decoder: TypeAlias = Callable[[RawMessage], list[Reading]]

DECODERS: Final[Mapping[str, Decoder]] = {
    "native": native.decode,
    "ttn-v3": TheThingsStack(),
    "chirpstack-v4": ChirpStack(),
    "tasmota": Tasmota(),
    "esphome": ESPHome(),
    "zebra-fx": zebra_fx.decode,
    "impinj-r700": impinj.decode,
    "owntracks": owntracks.decode,
    "ruuvi-gateway": ruuvi.decode,
    "sparkplug-b": SparkplugDecoder(),
}

__all__ = ["DECODERS", "DecodeError", "Decoder"]
