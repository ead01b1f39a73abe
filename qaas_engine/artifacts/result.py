"""What a quantization returns, and writing it: each file appears whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from qaas_engine.artifacts.html import render_html

QUANTIZED_MODEL_FILE = "model.quant.onnx"
ENCODINGS_FILE = "encodings.json"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"


@dataclass
class QuantizationResult:
    quantized_model: onnx.ModelProto
    encodings: dict[str, Any]
    report: dict[str, Any]

    def save(self, outdir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write the artifacts; each file appears whole or not at all."""
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        payloads = {
            QUANTIZED_MODEL_FILE: self.quantized_model.SerializeToString(),
            ENCODINGS_FILE: json.dumps(self.encodings, indent=2).encode(),
            REPORT_FILE: json.dumps(self.report, indent=2).encode(),
            REPORT_HTML_FILE: render_html(self.report).encode(),
        }
        written = {}
        for name, payload in payloads.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=outdir)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, outdir / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written[name] = outdir / name
        return written
