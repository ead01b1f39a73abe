"""NNCF's ``nncf.quantize`` with its defaults on the ONNX backend; runs in NNCF's own venv
(``bench/.venvs/nncf``, made by ``bench.peers.nncf_env``), so it imports nothing of the project.

Defaults: preset ``performance`` (symmetric W8A8, per-channel weights), NNCF's own range
estimators and fast bias correction. Every calibration sample is one data item (NNCF's
``subset_size`` counts items), fed from an ``.npz`` whose arrays stack whole inputs. Prints one
JSON line on stdout: ``{"ok", "seconds", "error"}``; NNCF's logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calibration", type=Path, help=".npz: whole inputs stacked on axis 0")
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    stdout = os.fdopen(os.dup(1), "w")
    sys.stdout.flush()
    os.dup2(2, 1)  # NNCF's progress bars and logs away from the JSON line
    start = time.perf_counter()
    result: dict[str, object] = {"ok": False, "error": ""}
    try:
        import nncf  # type: ignore[import-not-found]  # NNCF's venv only
        import onnx

        with np.load(args.calibration) as data:
            arrays = {name: data[name] for name in data.files}
        count = len(next(iter(arrays.values())))
        items = [{name: np.asarray(a[i]) for name, a in arrays.items()} for i in range(count)]
        model = onnx.load(str(args.model))
        quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=count)
        onnx.save(quantized, str(args.output))
        result["ok"] = True
        result["nncf_version"] = nncf.__version__
    except Exception as error:
        traceback.print_exc()
        result["error"] = f"{type(error).__name__}: {error}"
    result["seconds"] = round(time.perf_counter() - start, 2)
    stdout.write(json.dumps(result) + "\n")
    stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
