"""The files a quantization job writes: the QDQ model, AIMET encodings, ``report.json`` and
the self-contained ``report.html`` (with its SVG charts)."""
