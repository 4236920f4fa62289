"""The conformed entities a source can feed (`feeds:` in city.yaml) and their columns.

This is the one place that says which conformed columns exist, their types, which are required and
what physical range a value must lie in. The config validator, the generated dbt staging models and the
docs all read it, so a new column is added here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    """A conformed column: its DuckDB type, whether a record needs it, and its physical range."""

    name: str
    type: str
    required: bool = False
    min: float | None = None
    max: float | None = None
    #: the quantity a `units:` entry converts (e.g. ``no2``); defaults to the column name
    quantity: str | None = None


@dataclass(frozen=True)
class Entity:
    """A conformed entity: the FIWARE model it follows, its key and its columns."""

    name: str
    fiware_model: str
    key: tuple[str, ...]
    columns: tuple[Column, ...] = field(default_factory=tuple)
    #: the column that dates a record: its city-local day is the record's daily partition
    time: str = ""

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]


_LAT = Column("latitude", "DOUBLE", min=-90, max=90)
_LON = Column("longitude", "DOUBLE", min=-180, max=180)

ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in [
        Entity(
            "air_quality_observations",
            "AirQualityObserved",
            ("station_id", "observed_at"),
            (
                Column("station_id", "VARCHAR", required=True),
                Column("observed_at", "TIMESTAMPTZ", required=True),
                Column("pm25", "DOUBLE", min=0, max=1000),
                Column("pm10", "DOUBLE", min=0, max=2000),
                Column("no2", "DOUBLE", min=0, max=2000),
                Column("so2", "DOUBLE", min=0, max=2000),
                Column("o3", "DOUBLE", min=0, max=2000),
                _LAT,
                _LON,
            ),
            time="observed_at",
        ),
        Entity(
            "service_requests",
            "ServiceRequest",
            ("service_request_id",),
            (
                Column("service_request_id", "VARCHAR", required=True),
                Column("requested_at", "TIMESTAMPTZ", required=True),
                Column("closed_at", "TIMESTAMPTZ"),
                Column("status", "VARCHAR"),
                Column("service_code", "VARCHAR"),
                Column("service_name", "VARCHAR"),
                Column("agency_responsible", "VARCHAR"),
                _LAT,
                _LON,
            ),
            time="requested_at",
        ),
        Entity(
            "road_collisions",
            "RoadAccident",
            ("collision_id",),
            (
                Column("collision_id", "VARCHAR", required=True),
                Column("accident_at", "TIMESTAMPTZ", required=True),
                Column("dead_within_30_days", "INTEGER", min=0, max=1000),
                Column("injured", "INTEGER", min=0, max=10000),
                _LAT,
                _LON,
            ),
            time="accident_at",
        ),
        Entity(
            "transit_ridership",
            "TransitRidership",
            ("service_date", "mode", "route_id", "stop_id"),
            (
                Column("service_date", "DATE", required=True),
                Column("boardings", "BIGINT", required=True, min=0),
                Column("mode", "VARCHAR"),
                Column("route_id", "VARCHAR"),
                Column("stop_id", "VARCHAR"),
                _LAT,
                _LON,
            ),
            time="service_date",
        ),
        Entity(
            "energy_consumption",
            "EnergyConsumption",
            ("meter_id", "period_start"),
            (
                Column("meter_id", "VARCHAR", required=True),
                Column("period_start", "DATE", required=True),
                Column("kwh", "DOUBLE", required=True, min=0),
                Column("sector", "VARCHAR"),
            ),
            time="period_start",
        ),
        Entity(
            "waste_collection",
            "WasteContainer",
            ("collected_on", "stream", "route_id"),
            (
                Column("collected_on", "DATE", required=True),
                Column("stream", "VARCHAR", required=True),
                Column("tonnes", "DOUBLE", required=True, min=0),
                Column("route_id", "VARCHAR"),
            ),
            time="collected_on",
        ),
    ]
}

#: conformed streams a waste source's own labels map to (seed `waste_streams`)
WASTE_STREAMS = ("refuse", "recycling", "organics", "other")
#: energy sectors (free text in sources, lower-cased in staging)
ENERGY_SECTORS = ("residential", "commercial", "industrial", "public")


#: the domain (Dagster tag `domain`) of a source, a model or a mart, by the words its name holds; each
#: conformed entity's name holds the words of its domain
DOMAINS: dict[str, tuple[str, ...]] = {
    "air": ("air_quality",),
    "energy": ("energy",),
    "mobility": ("transit", "mobility"),
    "safety": ("road_collisions", "safety"),
    "service_requests": ("service_request", "service_categor"),
    "waste": ("waste",),
}


def domain_of(name: str) -> str | None:
    """The domain a model or entity named `name` belongs to (e.g. mart_air_quality -> air); None for
    what spans domains (districts, dates, the indicators, the quarantine)."""
    return next((d for d, words in DOMAINS.items() if any(w in name for w in words)), None)
