"""PyTorch ``torch.export`` archives (.pt2) read as data, never as code.

``torch.export.load`` trusts its archive: it unpickles legacy weight and constant files, tensors
marked ``use_pickle``, script and opaque objects, and sample inputs (falling back to full
unpickling); it ``exec``s the program's guard strings, ``sympify``s (evaluates) its symbolic
expressions, and writes node names into Python source that FX compiles. So we never call it. We
read the archive ourselves: only the members a current ``torch.export.save`` writes as JSON or
raw tensor bytes are allowed, every other member is refused by name before anything is parsed;
the program JSON is checked (ATen operators only, identifier names, arithmetic-only symbolic
expressions, no script objects or subgraphs) and its guards and stack traces are dropped; the
tensors are built from raw bytes and handed to torch's deserializer as dictionaries, which it
uses as they are. While torch deserializes and converts, every unpickling entry point raises,
so a missed path fails the upload instead of running it.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from qaas_engine.errors import ModelImportError

if TYPE_CHECKING:
    import torch

MAX_ENTRIES = 100_000
MAX_UNCOMPRESSED_BYTES = 8 * 2**30
MAX_JSON_BYTES = 256 * 2**20
MODEL_NAME = "model"  # torch.export.save writes one program under this name
ARCHIVE_VERSION = "0"

# Members (after the archive's folder prefix) that torch.export.save writes.
_FIXED_MEMBERS = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    f"models/{MODEL_NAME}.json",
    f"data/weights/{MODEL_NAME}_weights_config.json",
    f"data/constants/{MODEL_NAME}_constants_config.json",
}
# Sample inputs are a torch.save pickle that every archive carries: allowed, never read.
_IGNORED_MEMBERS = {f"data/sample_inputs/{MODEL_NAME}.pt"}
_WEIGHT = re.compile(r"data/weights/weight_[0-9]+")
_CONSTANT = re.compile(r"data/constants/tensor_[0-9]+")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOTTED = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_ATEN = re.compile(r"torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)")
_ATEN_REFUSED = {"from_file"}  # reads a file the server names: not a computation
_PYTHON_TARGETS = {
    *(f"_operator.{op}" for op in ("getitem", "add", "sub", "mul", "floordiv", "truediv")),
    *(f"_operator.{op}" for op in ("mod", "neg", "pow", "eq", "ne", "ge", "gt", "le", "lt")),
    *(f"_operator.{op}" for op in ("and_", "or_", "not_", "abs")),
    *(f"torch.{op}" for op in ("sym_float", "sym_int", "sym_max", "sym_min", "sym_not")),
    *(f"torch.{op}" for op in ("sym_ite", "sym_sqrt", "_check", "_check_is_size")),
    *(f"math.{op}" for op in ("ceil", "floor", "trunc", "sqrt")),
}
# Symbolic shape expressions are evaluated by sympy: only symbols, numbers, arithmetic and the
# functions torch itself writes there may appear.
_SYMBOL = re.compile(r"[a-z]+[0-9]+")
_SYM_FUNCTIONS = {
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo", "int_oo", "floor",
    "ceiling", "sqrt", "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow",
    "Piecewise", "ExprCondPair", "StrictLessThan", "LessThan", "StrictGreaterThan",
    "GreaterThan", "Equality", "Unequality", "BooleanTrue", "BooleanFalse", "Infinity",
    "NegativeInfinity", "IntInfinity", "NegativeIntInfinity",
}  # fmt: skip
_SYM_CHARACTERS = re.compile(r"[A-Za-z0-9_+\-*/%(), .<>=!&|~']*")
_SYM_STRING = re.compile(r"'[A-Za-z0-9_]*'")  # srepr's Symbol('s0', ...): names, not code
_SYM_KEYWORD = re.compile(r"\b[a-z][a-z_]*\s*=(?!=)")  # srepr's positive=True
_NAME_KEYS = {"name", "as_name"}
_PATH_KEYS = {"parameter_name", "buffer_name", "tensor_constant_name", "fqn"}
_NAME_MAPS = {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values"}


@dataclass(frozen=True)
class _Layout:
    prefix: str
    names: frozenset[str]


def convert_pt2(path: Path) -> onnx.ModelProto:
    """Read a torch.export archive as data and export its program to ONNX."""
    program = load_exported_program(path)
    import torch

    try:
        with _unpickling_forbidden():
            onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, optimize=True)
    except ModelImportError:
        raise
    except Exception as error:
        raise ModelImportError(
            f"could not convert the torch.export program to ONNX: {str(error)[:300]}"
        ) from None
    if onnx_program is None:
        raise ModelImportError("torch.onnx.export returned no program for the torch.export archive")
    return onnx_program.model_proto


def load_exported_program(path: Path) -> Any:
    """The archive's ExportedProgram, built without torch's archive loader."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelImportError(f"{path.name} is a damaged zip archive: {error}") from None
    with archive:
        layout = _check_members(archive, path.name)
        program = _read_json(archive, layout.prefix + f"models/{MODEL_NAME}.json")
        _check_program(program)
        state_dict = _read_tensors(archive, layout, "weights", _WEIGHT)
        constants = _read_tensors(archive, layout, "constants", _CONSTANT)
    return _deserialize(program, state_dict, constants)


def _check_members(archive: zipfile.ZipFile, name: str) -> _Layout:
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:
        raise ModelImportError(f"{name}: too many archive entries ({len(infos)})")
    total = sum(info.file_size for info in infos)
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ModelImportError(f"{name}: archive expands to {total} bytes, over the limit")
    filenames = [info.filename for info in infos]
    if len(set(filenames)) != len(filenames):
        twice = sorted({f for f in filenames if filenames.count(f) > 1})[0]
        raise ModelImportError(f"{name}: archive member {twice} appears twice")
    formats = [f for f in filenames if f == "archive_format" or f.endswith("/archive_format")]
    if not formats:
        if any(f.endswith(".pkl") for f in filenames):
            raise ModelImportError(
                f"{name} is a torch.save checkpoint (a pickle), not a torch.export archive; "
                "qaas never unpickles uploads: save it with torch.export.save or export to ONNX"
            )
        raise ModelImportError(f"{name} is a zip file but not a torch.export (.pt2) archive")
    prefix = min(formats, key=len)[: -len("archive_format")]
    if "/" in prefix.rstrip("/") or prefix.startswith((".", "/")):
        raise ModelImportError(f"{name}: unexpected archive folder '{prefix}'")
    for filename in filenames:
        if filename.endswith("/") and prefix.startswith(filename):
            continue  # a folder entry above the archive's files
        member = filename[len(prefix) :] if filename.startswith(prefix) else None
        if member is None or not (
            member in _FIXED_MEMBERS
            or member in _IGNORED_MEMBERS
            or _WEIGHT.fullmatch(member)
            or _CONSTANT.fullmatch(member)
        ):
            raise ModelImportError(
                f"{name}: archive member '{filename}' is not one torch.export.save writes as "
                f"JSON or raw tensor bytes ({_why_refused(member or filename)}); qaas never loads "
                "pickles, legacy weight files, script objects or compiled code from an upload"
            )
    _expect_text(archive, prefix + "archive_format", "pt2", name)
    _expect_text(archive, prefix + "archive_version", ARCHIVE_VERSION, name)
    if prefix + "byteorder" in filenames:
        _expect_text(archive, prefix + "byteorder", "little", name)
    if prefix + f"models/{MODEL_NAME}.json" not in filenames:
        raise ModelImportError(f"{name}: the archive holds no program (models/{MODEL_NAME}.json)")
    return _Layout(prefix, frozenset(filenames))


def _why_refused(member: str) -> str:
    if member.endswith((".pt", ".pkl", ".pickle")):
        return "a pickle"
    if "opaque_obj_" in member or "custom_obj_" in member:
        return "a pickled object"
    if member.endswith((".pt2", ".zip")):
        return "a nested archive"
    if "aotinductor" in member or member.endswith((".so", ".dll", ".dylib", ".cubin")):
        return "compiled code"
    return "unknown member"


def _expect_text(archive: zipfile.ZipFile, member: str, expected: str, name: str) -> None:
    if member not in archive.NameToInfo:
        raise ModelImportError(f"{name}: archive member {member} is missing")
    if archive.getinfo(member).file_size > 64:
        raise ModelImportError(f"{name}: archive member {member} is not what torch writes")
    value = archive.read(member).decode(errors="replace").strip()
    if value != expected:
        raise ModelImportError(
            f"{name}: archive member {member} says '{value[:40]}', expected '{expected}' "
            f"(qaas reads archives of torch {_torch_version()}'s format)"
        )


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _read_json(archive: zipfile.ZipFile, member: str) -> Any:
    if archive.getinfo(member).file_size > MAX_JSON_BYTES:
        raise ModelImportError(f"archive member {member} is over {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(archive.read(member))
    except (ValueError, UnicodeDecodeError):
        raise ModelImportError(f"archive member {member} is not valid JSON") from None


def _refuse(where: str, why: str) -> ModelImportError:
    return ModelImportError(f"the program in the archive {why} (at {where}); refused")


def _check_program(program: Any) -> None:
    """Refuse what torch would evaluate as code; drop what it would execute and we don't need."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise ModelImportError(f"models/{MODEL_NAME}.json is not a torch.export program")
    program["guards_code"] = []  # exec'd by ExportedProgram.module(); input checks only
    _check_node(program["graph_module"], "graph_module")
    ranges = program.get("range_constraints") or {}
    if not isinstance(ranges, dict):
        raise _refuse("range_constraints", "has malformed range constraints")
    for symbol in ranges:
        if not _SYMBOL.fullmatch(str(symbol)):
            raise _refuse("range_constraints", f"names a symbol '{str(symbol)[:40]}'")


def _check_node(value: Any, where: str) -> None:
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_node(item, f"{where}[{index}]")
        return
    if not isinstance(value, dict):
        return
    if "target" in value and "inputs" in value and "outputs" in value:
        _check_target(value["target"], where)
        if isinstance(value.get("metadata"), dict):
            value["metadata"].pop("stack_trace", None)  # written into generated source
    for key, item in value.items():
        here = f"{where}.{key}"
        if key in _NAME_KEYS and isinstance(item, str) and not _IDENTIFIER.fullmatch(item):
            raise _refuse(here, f"uses '{item[:40]}' as a name, which is not an identifier")
        elif key in _PATH_KEYS and item and not _DOTTED.fullmatch(str(item)):
            raise _refuse(here, f"uses '{str(item)[:40]}' as an attribute path")
        elif key in _NAME_MAPS and isinstance(item, dict):
            for name in item:
                if not _IDENTIFIER.fullmatch(name):
                    raise _refuse(here, f"uses '{name[:40]}' as a name, which is not an identifier")
        elif key == "as_operator":
            _check_target(item, here)
        elif key == "expr_str":
            _check_sym_expr(item, here)
        elif key in ("as_graph", "as_custom_obj", "custom_obj", "as_custom_objs") and item:
            raise _refuse(here, "holds a script object or a control-flow subgraph")
        elif key == "custom_obj_values" and item:
            raise _refuse(here, "holds script objects")
        _check_node(item, here)


def _check_target(target: Any, where: str) -> None:
    if not isinstance(target, str):
        raise _refuse(where, "has a node without an operator name")
    if target in _PYTHON_TARGETS:
        return
    match = _ATEN.fullmatch(target)
    if match is None:
        raise _refuse(where, f"calls {target[:80]}, which is not an ATen operator")
    if match.group(1) in _ATEN_REFUSED:
        raise _refuse(where, f"calls {target}, which reads files")
    import torch

    packet = getattr(torch.ops.aten, match.group(1), None)
    if packet is None or match.group(2) not in packet.overloads():
        raise _refuse(where, f"calls {target}, an operator this torch does not have")


def _check_sym_expr(expression: Any, where: str) -> None:
    text = str(expression)
    bare = _SYM_KEYWORD.sub("", _SYM_STRING.sub("", text))
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare)
    if (
        len(text) > 4096
        or not _SYM_CHARACTERS.fullmatch(text)
        or "'" in bare
        or re.search(r"(?<![0-9])\.|\.(?![0-9])", bare)
        or any(not (_SYMBOL.fullmatch(n) or n in _SYM_FUNCTIONS) for n in names)
    ):
        raise _refuse(where, f"has a symbolic expression that is not arithmetic: {text[:60]!r}")


def _read_tensors(
    archive: zipfile.ZipFile, layout: _Layout, kind: str, payload: re.Pattern[str]
) -> dict[str, torch.Tensor]:
    """Tensors from their raw bytes and the config's dtype, sizes and strides."""
    import torch
    from torch._export.serde.serialize import deserialize_scalar_type

    config_member = layout.prefix + f"data/{kind}/{MODEL_NAME}_{kind}_config.json"
    if config_member not in layout.names:
        raise ModelImportError(f"the archive has no {kind} config ({config_member})")
    config = _read_json(archive, config_member)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelImportError(f"archive member {config_member} is not a payload config")
    storages: dict[str, torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for fqn, entry in entries.items():
        where = f"{config_member}: '{fqn}'"
        if not isinstance(entry, dict) or not _DOTTED.fullmatch(fqn):
            raise ModelImportError(f"{where} is not a tensor entry")
        member = f"data/{kind}/{entry.get('path_name')}"
        if entry.get("use_pickle") or not payload.fullmatch(member):
            raise ModelImportError(
                f"{where} is stored as a pickle ({entry.get('path_name')}), which qaas never "
                "loads; keep it a plain tensor parameter or buffer, or export to ONNX"
            )
        meta = entry.get("tensor_meta")
        if not isinstance(meta, dict) or layout.prefix + member not in layout.names:
            raise ModelImportError(f"{where} has no tensor description or no data member")
        try:
            dtype = deserialize_scalar_type(meta["dtype"])
            sizes = [_int(s) for s in meta["sizes"]]
            strides = [_int(s) for s in meta["strides"]]
            offset = _int(meta["storage_offset"])
        except (KeyError, TypeError, ValueError):
            raise ModelImportError(f"{where} has a malformed tensor description") from None
        if member not in storages:
            storages[member] = _raw_storage(archive, layout.prefix + member, dtype, sizes)
        storage = storages[member]
        _check_extent(where, storage.numel(), sizes, strides, offset)
        tensor = torch.as_strided(storage, sizes, strides, offset)
        if entry.get("is_param"):
            tensor = torch.nn.Parameter(tensor, requires_grad=bool(meta.get("requires_grad")))
        tensors[fqn] = tensor
    return tensors


def _int(value: Any) -> int:
    """A serialized SymInt that must be a plain integer (archives with symbolic sizes refused)."""
    if isinstance(value, dict) and isinstance(value.get("as_int"), int):
        return value["as_int"]
    raise ValueError(value)


def _raw_storage(
    archive: zipfile.ZipFile, member: str, dtype: torch.dtype, sizes: list[int]
) -> torch.Tensor:
    import torch

    data = archive.read(member)
    if not data:  # torch writes empty tensors as empty members
        return torch.zeros(sizes, dtype=dtype).flatten()
    element = torch.empty((), dtype=dtype).element_size()
    if len(data) % element:
        raise ModelImportError(
            f"archive member {member}: {len(data)} bytes is not a whole number of {dtype}"
        )
    return torch.frombuffer(bytearray(data), dtype=dtype)


def _check_extent(
    where: str, numel: int, sizes: list[int], strides: list[int], offset: int
) -> None:
    if any(s < 0 for s in sizes) or any(s < 0 for s in strides) or offset < 0:
        raise ModelImportError(f"{where} has negative sizes, strides or offset")
    if 0 in sizes:
        return
    last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides, strict=True))
    if last >= numel:
        raise ModelImportError(f"{where} reaches past the end of its data ({numel} elements)")


def _deserialize(
    program: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
) -> Any:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program)
        with _unpickling_forbidden():
            return ExportedProgramDeserializer().deserialize(
                serialized, state_dict, constants, None
            )
    except ModelImportError:
        raise
    except Exception as error:
        raise ModelImportError(
            f"could not read the torch.export archive: {str(error)[:300]}"
        ) from None


class _UnpicklingAttempt(ModelImportError):
    pass


@contextlib.contextmanager
def _unpickling_forbidden() -> Iterator[None]:
    """A tripwire: unpickling while torch reads our checked program means a path we missed."""
    import torch

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise _UnpicklingAttempt(
            "reading the archive tried to unpickle data, which qaas never does; refused"
        )

    patched = [
        (pickle, "loads"),
        (pickle, "load"),
        (torch, "load"),
        (torch.serialization, "load"),
        (torch._C, "_pickle_load_obj"),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr in patched]
    for owner, attr in patched:
        setattr(owner, attr, refuse)
    try:
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
