"""What a quantized model costs and saves, for people: energy model, measured latency,
per-layer analysis and the self-contained ``report.html``."""

from qaas_engine.cost.energy import EnergyProfile
from qaas_engine.reporting.energy import energy_report
from qaas_engine.reporting.html import render_html

__all__ = ["EnergyProfile", "energy_report", "render_html"]
