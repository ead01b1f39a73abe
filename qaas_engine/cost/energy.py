"""The energy model: picojoules per operation and per byte moved, from a profile that is data.

The default profile is the 45 nm table the design cites (Horowitz, ISSCC 2014): the point of
quantizing is energy, so the same work is priced at FP32 and at the bit-widths a quantized model
computes in. Compute energy is MACs x (mult + add); memory energy is bytes moved x energy of a
64-bit access at a stated memory level. Two readers: the energy report prices each layer at its
fixed widths (:func:`layer_energy`), and Bayesian Bits differentiates the expected cost in
learned widths (:func:`expected_energy_pj`, :func:`bit_operations`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qaas_engine.cost.shapes import LayerShape
from qaas_engine.errors import SpecError

if TYPE_CHECKING:
    import torch

FLOAT_BITS = 32
ACCESS_BITS = 64  # the table prices one 64-bit access
# A profile arrives with a job and is stored and returned with it: its strings and lists are
# capped, far above what a chip's table needs.
MAX_NAME_CHARS = 200
MAX_ACCESS_LEVELS = 32
MAX_LEVEL_CHARS = 64
MAX_NOTES = 16
MAX_NOTE_CHARS = 500


@dataclass(frozen=True)
class EnergyProfile:
    """Picojoules per operation and per 64-bit memory access; load one from JSON for your chip.

    Integer figures are given at ``int_reference_bits``; other widths scale adds ~ bits and
    multiplies ~ bits^2 (the product of the two operand widths), as the design says.
    """

    name: str = "45 nm, 0.9 V (Horowitz, ISSCC 2014; the seed's table)"
    int_add_pj: float = 0.03
    int_mult_pj: float = 0.2
    int_reference_bits: int = 8
    float_add_pj: float = 0.9
    float_mult_pj: float = 3.7
    access_pj: dict[str, float] = field(
        default_factory=lambda: {
            "cache_8kb": 10.0,
            "cache_32kb": 20.0,
            "cache_1mb": 100.0,
            "dram": 1950.0,
        }
    )
    weight_level: str = "dram"
    activation_level: str = "cache_1mb"
    notes: tuple[str, ...] = (
        "DRAM access is 1300-2600 pJ per 64 bits in the table; the midpoint 1950 is used",
    )

    def __post_init__(self) -> None:
        numbers = [self.int_add_pj, self.int_mult_pj, self.float_add_pj, self.float_mult_pj]
        if any(not np.isfinite(v) or v < 0 for v in [*numbers, *self.access_pj.values()]):
            raise SpecError("energy profile: every energy must be a finite number >= 0 pJ")
        if self.int_reference_bits < 1:
            raise SpecError("energy profile: int_reference_bits must be at least 1")
        for level in (self.weight_level, self.activation_level):
            if level not in self.access_pj:
                raise SpecError(
                    f"energy profile: memory level {level!r} is not one of {sorted(self.access_pj)}"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnergyProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"energy profile: unknown fields {unknown}; known: {sorted(known)}")
        _check_sizes(data)
        values = dict(data)
        if "access_pj" in values:
            values["access_pj"] = {str(k): float(v) for k, v in values["access_pj"].items()}
        if "notes" in values:
            values["notes"] = tuple(str(n) for n in values["notes"])
        try:
            return cls(**values)
        except TypeError as error:
            raise SpecError(f"energy profile: {error}") from None

    @classmethod
    def load(
        cls, source: EnergyProfile | Mapping[str, Any] | str | os.PathLike[str] | None
    ) -> EnergyProfile:
        """A profile from itself, a dict, or a JSON file; ``None`` gives the default table."""
        if source is None:
            return cls()
        if isinstance(source, EnergyProfile):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, ValueError) as error:
            raise SpecError(f"energy profile {source}: {error}") from None
        if not isinstance(data, dict):
            raise SpecError(f"energy profile {source}: expected a JSON object")
        return cls.from_dict(data)

    def add_pj(self, bits: int) -> float:
        if bits >= FLOAT_BITS:
            return self.float_add_pj
        return self.int_add_pj * bits / self.int_reference_bits

    def mult_pj(self, bits_a: int, bits_b: int) -> float:
        if max(bits_a, bits_b) >= FLOAT_BITS:
            return self.float_mult_pj
        return self.int_mult_pj * (bits_a * bits_b) / self.int_reference_bits**2

    def byte_pj(self, level: str) -> float:
        return self.access_pj[level] / (ACCESS_BITS / 8)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data


def _check_sizes(data: Mapping[str, Any]) -> None:
    """Types and caps of a profile's strings and lists, before anything is converted."""
    for name in ("name", "weight_level", "activation_level"):
        value = data.get(name, "")
        if not isinstance(value, str):
            raise SpecError(f"energy profile: {name} must be a string")
        if len(value) > MAX_NAME_CHARS:
            raise SpecError(f"energy profile: {name} is longer than {MAX_NAME_CHARS} characters")
    access = data.get("access_pj", {})
    if not isinstance(access, Mapping):
        raise SpecError("energy profile: access_pj must be an object of level -> pJ")
    if len(access) > MAX_ACCESS_LEVELS:
        raise SpecError(f"energy profile: access_pj has more than {MAX_ACCESS_LEVELS} levels")
    if any(len(str(level)) > MAX_LEVEL_CHARS for level in access):
        raise SpecError(
            f"energy profile: an access_pj level name is longer than {MAX_LEVEL_CHARS} characters"
        )
    notes = data.get("notes", ())
    if not isinstance(notes, list | tuple) or not all(isinstance(n, str) for n in notes):
        raise SpecError("energy profile: notes must be a list of strings")
    if len(notes) > MAX_NOTES or any(len(note) > MAX_NOTE_CHARS for note in notes):
        raise SpecError(
            f"energy profile: notes may hold at most {MAX_NOTES} notes of at most "
            f"{MAX_NOTE_CHARS} characters each"
        )


def layer_energy(
    layer: LayerShape,
    profile: EnergyProfile,
    w_bits: int,
    a_bits: int,
    stored_w_bits: int,
    o_bits: int,
    mem_a_bits: int | None = None,
) -> dict[str, float]:
    """One layer's energy per sample: computing at ``w_bits`` x ``a_bits``, reading weights
    stored at ``stored_w_bits`` and inputs at ``mem_a_bits`` (else ``a_bits``), writing its
    output at ``o_bits``; with the bytes moved, which the report shows beside the energy."""
    if layer.kind == "mac":
        per_op = profile.mult_pj(w_bits, a_bits) + profile.add_pj(max(w_bits, a_bits))
    elif layer.kind == "mult":
        per_op = profile.mult_pj(a_bits, a_bits)
    else:
        per_op = profile.add_pj(a_bits)
    in_bits = a_bits if mem_a_bits is None else mem_a_bits
    weight_bytes = layer.weight_elements * stored_w_bits / 8 + layer.bias_elements * 4
    act_bytes = layer.input_elements * in_bits / 8 + layer.output_elements * o_bits / 8
    compute = layer.macs * per_op
    weights_memory = weight_bytes * profile.byte_pj(profile.weight_level)
    act_memory = act_bytes * profile.byte_pj(profile.activation_level)
    return {
        "compute": round(compute, 4),
        "weights_memory": round(weights_memory, 4),
        "activations_memory": round(act_memory, 4),
        "total": round(compute + weights_memory + act_memory, 4),
        "bytes": weight_bytes + act_bytes,
    }


def expected_energy_pj(
    profile: EnergyProfile,
    macs: int,
    weight_elements: int,
    input_elements: int,
    macs_share: torch.Tensor,
    w_bits: torch.Tensor,
    a_bits: torch.Tensor,
) -> torch.Tensor:
    """A weighted layer's energy at (expected, fractional) bit-widths, differentiable in them.

    The integer rule holds at every width here, 32 included, so the cost is smooth where a
    learner moves; ``macs_share`` is the share of output channels kept (it scales the MACs and
    the weights, not the inputs, which are read whatever is pruned)."""
    import torch

    ref = profile.int_reference_bits
    compute = (
        macs
        * macs_share
        * (
            profile.int_mult_pj * w_bits * a_bits / ref**2
            + profile.int_add_pj * torch.maximum(w_bits, a_bits) / ref
        )
    )
    weights = weight_elements * macs_share * w_bits / 8 * profile.byte_pj(profile.weight_level)
    inputs = input_elements * a_bits / 8 * profile.byte_pj(profile.activation_level)
    return compute + weights + inputs


def bit_operations(
    macs: int, macs_share: torch.Tensor, w_bits: torch.Tensor, a_bits: torch.Tensor
) -> torch.Tensor:
    """BOPs (MACs x weight bits x activation bits): the hardware-free cost of mixed precision."""
    return macs * macs_share * w_bits * a_bits
