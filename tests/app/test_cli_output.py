"""The size on the summary line is the file a user downloads, not the weights' packed figure."""

from __future__ import annotations

from app.cli_output import result_table


def report(size: dict[str, int]) -> dict:
    return {"metrics": {}, "size_bytes": size, "steps": [{"name": "export", "seconds": 1.5}]}


def test_summary_prints_the_files_sizes():
    size = {"float": 123_144, "quantized": 34_200, "float_file": 125_000, "quantized_file": 41_377}
    line = result_table(report(size)).splitlines()[-1]
    assert "size 125,000 -> 41,377 bytes; 1.5 s" in line
    assert "34,200" not in line and "123,144" not in line


def test_summary_falls_back_to_the_weights_when_the_report_has_no_file_sizes():
    line = result_table(report({"float": 123_144, "quantized": 34_200})).splitlines()[-1]
    assert "size 123,144 -> 34,200 bytes (weights); 1.5 s" in line


def test_summary_says_when_the_simulation_ran_on_fewer_samples():
    size = {"float": 123_144, "quantized": 34_200}
    sampled = {**report(size), "metrics": {"samples": {"measured": 400, "simulated": 16}}}
    line = result_table(sampled).splitlines()[-1]
    assert "(simulated row and agreement: first 16 of 400 samples); size" in line
    every = {**report(size), "metrics": {"samples": {"measured": 16, "simulated": 16}}}
    assert "first" not in result_table(every)
