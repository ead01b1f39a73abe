"""MTCNN's output network (ONet, Zhang et al. 2016) rebuilt from the facts of facenet-pytorch's
weights, so its trained state dict can be exported to ONNX at bench setup.

The state dict names the layers and their shapes; the rest (3x3/3x3/2x2 ceil-mode max pools, a
per-channel PReLU after every layer but the heads, the feature map flattened in (W, H, C) order
because the weights came from Caffe, the face-probability softmax) follows the published network.
Inputs are 48x48 RGB crops scaled as ``(pixel - 127.5) / 128``; outputs are box offsets (4),
five landmarks as fractions of the crop (x1..x5, y1..y5) and the face probability (2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class ONet(nn.Module):
    """The network whose parameter names match facenet-pytorch's ``onet.pt``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(128 * 3 * 3, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = nn.functional.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = nn.functional.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = nn.functional.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        probability = torch.softmax(self.dense6_1(x), dim=1)
        return self.dense6_2(x), self.dense6_3(x), probability


def export_onet(state_dict_path: Path, target: Path) -> Path:
    """Load the state dict (tensors only: ``weights_only``) and write the ONNX model once."""
    if target.exists():
        return target
    network = ONet().eval()
    network.load_state_dict(torch.load(state_dict_path, weights_only=True))
    example = torch.zeros(1, 3, 48, 48)
    torch.onnx.export(
        network,
        (example,),
        str(target),
        input_names=["crops"],
        output_names=["box", "landmarks", "face_probability"],
        dynamic_axes={"crops": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return target
