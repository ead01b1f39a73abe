"""What a quantized model costs and saves, for people: energy model, measured latency,
per-layer analysis, and the report assembled from them."""

from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.reporting.energy import energy_report

__all__ = ["EnergyProfile", "energy_report"]
