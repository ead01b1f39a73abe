"""``--objective`` reaches the spec the engine runs (qaas_engine.latency_objective)."""

from __future__ import annotations

import argparse

from app.cli_options import add_quantize_options, spec_from_args


def test_the_objective_flag_reaches_the_spec():
    parser = argparse.ArgumentParser()
    add_quantize_options(parser)
    chosen = spec_from_args(parser.parse_args(["m.onnx", "--objective", "latency"]))
    assert chosen.objective == "latency"
    assert spec_from_args(parser.parse_args(["m.onnx"])).objective == "energy"
