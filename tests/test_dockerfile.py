"""Docker does not run here: the image is checked by reading. Every package the wheel ships must
be copied into the image, or its `qaas serve` fails on the first import the wheel's does not."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_image_copies_every_package_the_wheel_ships():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*").split(".")[0] for p in patterns}
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, flags=re.M))
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    for package in packages:  # the dependency layer's stub of each package, too
        assert f"{package}/__init__.py" in dockerfile, package
