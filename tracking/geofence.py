"""Site geofences as the registry stores them (``locations.geofence``, validated by devices.registry.Geofence):
``{"polygon": [[lat, lon], ...]}`` or ``{"center": [lat, lon], "radius_m": r}``, latitude first. Pure functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

EARTH_RADIUS_M: Final = 6_371_008.8  # IUGG mean radius


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle (haversine) distance between two [lat, lon] points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class Geofence:
    polygon: tuple[tuple[float, float], ...] = ()
    center: tuple[float, float] | None = None
    radius_m: float = 0.0

    def contains(self, point: tuple[float, float]) -> bool:
        if self.center is not None:
            return distance_m(self.center, point) <= self.radius_m
        return _inside_polygon(self.polygon, point)

    @classmethod
    def from_json(cls, shape: Mapping[str, Any]) -> Geofence | None:
        """The geofence of a ``locations.geofence`` value; None for a shape it does not describe."""
        polygon = shape.get("polygon")
        if isinstance(polygon, list) and len(polygon) >= 3:
            return cls(polygon=tuple((float(p[0]), float(p[1])) for p in polygon))
        center, radius = shape.get("center"), shape.get("radius_m")
        if isinstance(center, list) and len(center) == 2 and isinstance(radius, int | float):
            return cls(center=(float(center[0]), float(center[1])), radius_m=float(radius))
        return None


def _inside_polygon(polygon: Sequence[tuple[float, float]], point: tuple[float, float]) -> bool:
    # Ray casting on plain lat/lon: a site's polygon spans a few hundred metres, where the Earth is flat enough.
    lat, lon = point
    inside = False
    j = len(polygon) - 1
    for i, (lat_i, lon_i) in enumerate(polygon):
        lat_j, lon_j = polygon[j]
        if (lon_i > lon) != (lon_j > lon) and lat < (lat_j - lat_i) * (lon - lon_i) / (lon_j - lon_i) + lat_i:
            inside = not inside
        j = i
    return inside


def site_at(fences: Mapping[str, Geofence], point: tuple[float, float]) -> str | None:
    """The site whose geofence contains the point (the first by id if fences overlap), or None on the road."""
    for site_id in sorted(fences):
        if fences[site_id].contains(point):
            return site_id
    return None
