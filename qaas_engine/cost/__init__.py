"""What a model costs: its work per sample, and the energy of that work.

The engine's core, below the algorithms and the reports: Bayesian Bits trades accuracy against
this cost, the energy report prints it, and neither owns it. Nothing here imports ``quant`` or
``reporting``.
"""
