"""Riverton, the reference city: seeded messy agency silos, their ground truth and an Open311 server."""

from orchestration.reference_city.generate import generate
from orchestration.reference_city.open311 import probe_open311, running_open311

__all__ = ["generate", "probe_open311", "running_open311"]
