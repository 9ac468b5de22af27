"""Topic filter → decoder: which format a topic's payloads are in. The seam Telegraf calls "data_format"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from paho.mqtt.client import topic_matches_sub

from devices.decoder_options import build_decoders
from devices.decoders import DECODERS, Decoder
from devices.decoders.native import TOPIC_ROOT

NATIVE_FILTER: Final = f"{TOPIC_ROOT}/#"
_CACHE_LIMIT: Final = 100_000


@dataclass(frozen=True, slots=True)
class Route:
    topic_filter: str
    decoder: str


def parse_routes(text: str) -> list[Route]:
    """Parse ``filter=decoder;filter=decoder`` into routes, naming the decoders that exist if one does not."""
    routes = []
    for part in filter(None, (chunk.strip() for chunk in text.split(";"))):
        topic_filter, sep, decoder = part.rpartition("=")
        if not sep or not topic_filter.strip():
            raise ValueError(f"route {part!r} must be 'topic/filter=decoder'")
        routes.append(Route(topic_filter.strip(), decoder.strip()))
    check_routes(routes, DECODERS)
    return routes


def check_routes(routes: Sequence[Route], decoders: Mapping[str, Decoder]) -> None:
    for route in routes:
        if route.decoder not in decoders:
            known = ", ".join(sorted(decoders))
            raise ValueError(f"route {route.topic_filter!r} names decoder {route.decoder!r}; known decoders: {known}")


class Router:
    """Finds the decoder of a topic: the first matching route, else the native format under ``stocktrace/``.

    Devices publish on a few thousand distinct topics, so the answer is cached per topic. The decoders are the
    router's own (a stateful decoder such as Sparkplug's follows what this worker saw); `use` swaps in decoders
    rebuilt with new device options, and the cache starts over.

    With a ``prefix`` (``STOCKTRACE_MQTT_TOPIC_PREFIX``, e.g. ``site/berlin``) every device topic sits under it:
    the subscriptions carry it, and routes and decoders see the topic without it (`local`), so a site's Tasmota
    plugs publishing on ``site/berlin/tele/plug-1/SENSOR`` decode as ``tele/plug-1/SENSOR`` would. Replies to
    devices go back under it (`remote`).
    """

    def __init__(
        self, routes: Sequence[Route], decoders: Mapping[str, Decoder] | None = None, prefix: str = ""
    ) -> None:
        self.prefix = prefix.strip("/")
        self._strip = f"{self.prefix}/" if self.prefix else ""
        self._decoders = dict(decoders) if decoders is not None else build_decoders(()).decoders
        check_routes(routes, self._decoders)
        self._routes = [(route.topic_filter, route.decoder) for route in routes]
        self._routes.append((NATIVE_FILTER, "native"))
        self._cache: dict[str, Decoder | None] = {}

    @property
    def topic_filters(self) -> list[str]:
        """The routed filters (the native fallback is subscribed through STOCKTRACE_MQTT_TOPICS)."""
        return [topic_filter for topic_filter, _ in self._routes[:-1]]

    def subscriptions(self, topic_filters: Sequence[str]) -> list[str]:
        """The filters to subscribe to: ``topic_filters`` under the prefix, once each."""
        return list(dict.fromkeys(self.remote(topic_filter) for topic_filter in topic_filters))

    def local(self, topic: str) -> str | None:
        """The topic without the prefix; None for a topic that is not under it."""
        if not self._strip:
            return topic
        return topic[len(self._strip) :] if topic.startswith(self._strip) else None

    def unrouted(self, topic: str) -> str:
        """Why a topic has no decoder (for its dead letter)."""
        if self.local(topic) is None:
            return f"topic is not under the topic prefix {self.prefix!r}"
        return "no decoder is routed for this topic"

    def remote(self, topic: str) -> str:
        """A device-side topic (a reply, a subscription) under the prefix."""
        return self._strip + topic

    @property
    def decoders(self) -> Mapping[str, Decoder]:
        """The decoder of each source format, as `resolve` hands them out."""
        return self._decoders

    def use(self, decoders: Mapping[str, Decoder]) -> None:
        """Decode with these from the next message on (a registry change rebuilt them)."""
        check_routes([Route(f, name) for f, name in self._routes], decoders)
        self._decoders = dict(decoders)
        self._cache.clear()

    def resolve(self, topic: str) -> Decoder | None:
        try:
            return self._cache[topic]
        except KeyError:
            pass
        name = next((name for pattern, name in self._routes if topic_matches_sub(pattern, topic)), None)
        found = None if name is None else self._decoders[name]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[topic] = found
        return found
