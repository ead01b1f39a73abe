"""Write the attack corpus into a folder: torch.export archives that run code in a loader that
trusts them. Generated, never committed; ``python tests/corpus/make_attacks.py OUT``.

Every payload writes ``OUT/ATTACK_MARKER`` when it runs, so a test can tell "refused" from
"refused after running the attacker's code". Each case says whether a safe reader must refuse
the file (and with which words) or may accept it because the dangerous part is never read.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ATTACK_MARKER = "ATTACK_MARKER"


@dataclass(frozen=True)
class Attack:
    name: str
    cause: tuple[str, ...]  # words the refusal must contain; empty: the upload may be accepted


ATTACKS = [
    Attack("legacy_weights_pickle", ("data/weights/model.pt", "pickle")),
    Attack("legacy_constants_pickle", ("data/constants/model.pt", "pickle")),
    Attack("opaque_object_pickle", ("opaque_obj_0", "pickle")),
    Attack("custom_object_pickle", ("custom_obj_0", "pickle")),
    Attack("use_pickle_weight", ("pickle",)),
    Attack("use_pickle_constant", ("pickle",)),
    Attack("nested_archive", ("nested archive",)),
    Attack("compiled_code", ("compiled code",)),
    Attack("duplicate_member", ("appears twice",)),
    Attack("node_name_injection", ("not an identifier",)),
    Attack("attribute_path_injection", ("attribute path",)),
    Attack("symbolic_expression_injection", ("not arithmetic",)),
    Attack("operator_target_injection", ("not an ATen operator",)),
    Attack("file_reading_operator", ("reads files",)),
    Attack("pickled_sample_inputs", ()),  # never read: accepted, nothing runs
    Attack("guards_code_injection", ()),  # guards dropped: accepted, nothing runs
]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > '{self.marker}'",))


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.register_buffer("scale", torch.ones(2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) * self.scale


def _good_archive(path: Path) -> None:
    torch.manual_seed(0)
    program = torch.export.export(_Tiny().eval(), (torch.randn(1, 1, 8, 8),))
    torch.export.save(program, path)


Edit = Callable[[dict[str, bytes], bytes], None]


def _rewrite(good: Path, out: Path, edit: Edit, payload: bytes) -> None:
    with zipfile.ZipFile(good) as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    edit(members, payload)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for name, data in members.items():
            dst.writestr(name, data)


def _prefix(members: dict[str, bytes]) -> str:
    return next(n for n in members if n.endswith("archive_format"))[: -len("archive_format")]


def _edit_json(members: dict[str, bytes], member: str, change: Callable[[dict], None]) -> None:
    full = _prefix(members) + member
    value = json.loads(members[full])
    change(value)
    members[full] = json.dumps(value).encode()


def _add(member: str) -> Edit:
    def edit(members: dict[str, bytes], payload: bytes) -> None:
        members[_prefix(members) + member] = payload

    return edit


def _object_constant(prefix_name: str) -> Edit:
    def edit(members: dict[str, bytes], payload: bytes) -> None:
        members[_prefix(members) + f"data/constants/{prefix_name}0"] = payload
        _edit_json(
            members,
            "data/constants/model_constants_config.json",
            lambda c: c["config"].update(
                {
                    "obj": {
                        "path_name": f"{prefix_name}0",
                        "is_param": False,
                        "use_pickle": True,
                        "tensor_meta": None,
                    }
                }
            ),
        )

    return edit


def _use_pickle(kind: str, first: str) -> Edit:
    def edit(members: dict[str, bytes], payload: bytes) -> None:
        members[_prefix(members) + f"data/{kind}/{first}"] = payload

        def change(config: dict) -> None:
            for entry in config["config"].values():
                if entry["path_name"] == first:
                    entry["use_pickle"] = True

        _edit_json(members, f"data/{kind}/model_{kind}_config.json", change)

    return edit


def _add_constant_tensor(members: dict[str, bytes], payload: bytes) -> None:
    """The tiny model has no tensor constant: give it one so the pickle flag has a target."""
    members[_prefix(members) + "data/constants/tensor_0"] = payload
    _edit_json(
        members,
        "data/constants/model_constants_config.json",
        lambda c: c["config"].update(
            {
                "c": {
                    "path_name": "tensor_0",
                    "is_param": False,
                    "use_pickle": True,
                    "tensor_meta": None,
                }
            }
        ),
    )


def _program(change: Callable[[dict], None]) -> Edit:
    def edit(members: dict[str, bytes], payload: bytes) -> None:
        _edit_json(members, "models/model.json", change)

    return edit


def _python(marker: Path) -> str:
    """One expression, single quotes only: it must survive being pasted into generated code."""
    return f"__import__('os').system('echo pwned > {marker}')"


def _rename_first_node(marker: Path) -> Callable[[dict], None]:
    def change(program: dict) -> None:
        graph = program["graph_module"]["graph"]
        node = graph["nodes"][0]
        old = node["outputs"][0]["as_tensor"]["name"]
        new = f"{old}; {_python(marker)}; {old}"
        node["outputs"][0]["as_tensor"]["name"] = new
        graph["tensor_values"][new] = graph["tensor_values"].pop(old)
        text = json.dumps(program).replace(f'"name": "{old}"', f'"name": {json.dumps(new)}')
        program.clear()
        program.update(json.loads(text))

    return change


def _attribute_path(marker: Path) -> Callable[[dict], None]:
    def change(program: dict) -> None:
        for spec in program["graph_module"]["signature"]["input_specs"]:
            if "buffer" in spec:
                spec["buffer"]["buffer_name"] = f'scale"); {_python(marker)}; ("'

    return change


def _sym_expr(marker: Path) -> Callable[[dict], None]:
    def change(program: dict) -> None:
        graph = program["graph_module"]["graph"]
        name = next(iter(graph["tensor_values"]))
        graph["tensor_values"][name]["sizes"][0] = {"as_expr": {"expr_str": _python(marker)}}

    return change


def _target(target: str) -> Callable[[dict], None]:
    def change(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"][0]["target"] = target

    return change


def _guards(marker: Path) -> Callable[[dict], None]:
    def change(program: dict) -> None:
        program["guards_code"] = [f"{_python(marker)} == 0 or True"]

    return change


def _edits(marker: Path) -> dict[str, Edit]:
    return {
        "legacy_weights_pickle": _add("data/weights/model.pt"),
        "legacy_constants_pickle": _add("data/constants/model.pt"),
        "opaque_object_pickle": _object_constant("opaque_obj_"),
        "custom_object_pickle": _object_constant("custom_obj_"),
        "use_pickle_weight": _use_pickle("weights", "weight_0"),
        "use_pickle_constant": _add_constant_tensor,
        "nested_archive": _add("extra/inner.pt2"),
        "compiled_code": _add("data/aotinductor/model/model.so"),
        "node_name_injection": _program(_rename_first_node(marker)),
        "attribute_path_injection": _program(_attribute_path(marker)),
        "symbolic_expression_injection": _program(_sym_expr(marker)),
        "operator_target_injection": _program(_target("torch.ops.load_library")),
        "file_reading_operator": _program(_target("torch.ops.aten.from_file.default")),
        "pickled_sample_inputs": _add("data/sample_inputs/model.pt"),
        "guards_code_injection": _program(_guards(marker)),
    }


def _write_duplicate(good: Path, out: Path, payload: bytes) -> None:
    """Written apart from the edits: a dict of members cannot hold a name twice."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
        infos = src.infolist()
        for info in infos:
            dst.writestr(info.filename, src.read(info))
        weights = next(i.filename for i in infos if i.filename.endswith("weights/weight_0"))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate: the point
            dst.writestr(weights, payload)


def write_attacks(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    marker = (out / ATTACK_MARKER).resolve()
    payload = pickle.dumps(_Payload(marker))
    good = out / "good.pt2"
    _good_archive(good)
    edits = _edits(marker)
    for attack in ATTACKS:
        target = out / f"{attack.name}.pt2"
        if attack.name == "duplicate_member":
            _write_duplicate(good, target, payload)
        else:
            _rewrite(good, target, edits[attack.name], payload)


if __name__ == "__main__":
    write_attacks(Path(sys.argv[1]))
