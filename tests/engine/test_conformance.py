"""ONNX's own node test cases through ``qaas_engine.backend``, with ONNX Runtime as the baseline.

The cases are generated once per test session from the installed onnx wheel and each case runs
through both backends in the same run, so the comparison holds whatever versions are installed.
A case passes when every output has the expected shape and dtype and is close to the expected
value (``rtol=max(case.rtol, 1e-3)``, ``atol=max(case.atol, 1e-5)``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qaas_engine import backend as qaas_backend

DEFAULT_DOMAINS = ("", "ai.onnx")
WIDE_UNSIGNED = {np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64)}
_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")  # a function op's case, expanded to its body

# Ops whose every node case must pass (issue #15 names them: real exporters emit them).
NAMED_OPS = """CastLike Elu Selu Celu Softplus Mish ThresholdedRelu InstanceNormalization
GroupNormalization LRN Round Floor Ceil Sign Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh
Atanh Mod CumSum ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceProd ReduceSumSquare
LpNormalization DepthToSpace SpaceToDepth GatherElements GatherND ScatterND ScatterElements Trilu
NonZero IsInf IsNaN Size GridSample Hardmax EyeLike If Resize LayerNormalization""".split()


@dataclass(frozen=True)
class CaseOutcome:
    name: str
    subject: str  # the op the case tests (its expanded form included)
    op_types: frozenset[str]
    ours: str | None  # None: passed; otherwise why not
    ort: str | None
    fallback: frozenset[str]  # op types our backend ran by onnx.reference, not by torch
    exotic: bool  # the case's data hold a type torch has no tensors for
    wide_unsigned: bool  # ... or uint16/32/64, which torch holds only widened


def _default_domain_only(model: onnx.ModelProto) -> bool:
    return all(o.domain in DEFAULT_DOMAINS for o in model.opset_import) and all(
        n.domain in DEFAULT_DOMAINS for n in model.graph.node
    )


def _assert_similar(expected: Any, actual: Any, rtol: float, atol: float) -> None:
    if isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple), f"expected a sequence, got {type(actual)}"
        assert len(actual) == len(expected), f"sequence of {len(actual)}, not {len(expected)}"
        for e, a in zip(expected, actual, strict=True):
            _assert_similar(e, a, rtol, atol)
        return
    if expected is None:
        assert actual is None, f"expected an empty optional, got {type(actual)}"
        return
    expected, actual = np.asarray(expected), np.asarray(actual)
    assert actual.shape == expected.shape, f"shape {actual.shape}, expected {expected.shape}"
    if expected.dtype == object:
        np.testing.assert_array_equal(actual, expected)
        return
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype}, expected {expected.dtype}"
    if expected.dtype.kind not in "biufc":  # float8, 4-bit and bfloat16 types: compare as floats
        expected, actual = expected.astype(np.float32), actual.astype(np.float32)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def _as_arrays(values: Sequence[Any]) -> list[Any]:
    """Some cases store their data as TensorProto; ONNX's runner reads them as arrays too."""
    out: list[Any] = []
    for value in values:
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list | tuple):
            value = _as_arrays(value)
        out.append(value)
    return out


Runner = Callable[[onnx.ModelProto, list[Any], set[str]], Sequence[Any]]


def _dtypes(data_sets: Any) -> set[np.dtype]:
    """Every element type in a case's inputs and expected outputs (sequences included)."""
    found: set[np.dtype] = set()

    def visit(value: Any) -> None:
        if isinstance(value, list | tuple):
            for v in value:
                visit(v)
        elif isinstance(value, onnx.TensorProto):
            found.add(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.data_type)))
        elif value is not None:
            found.add(np.asarray(value).dtype)

    for inputs, outputs in data_sets:
        visit(list(inputs))
        visit(list(outputs))
    return found


_TORCH_HELD = {np.dtype(t) for t in (np.bool_, np.float16, np.float32, np.float64)}
_TORCH_HELD |= {np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8)}
_TORCH_HELD |= {np.dtype(ml_dtypes.bfloat16)}


def _exotic(dtype: np.dtype) -> bool:
    """Types torch has no tensors for: strings, float8, 4-bit and 2-bit integers."""
    return dtype not in _TORCH_HELD and dtype not in WIDE_UNSIGNED


def _outcome(run: Runner, case: Any, fallback: set[str]) -> str | None:
    rtol, atol = max(case.rtol, 1e-3), max(case.atol, 1e-5)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            for inputs, expected in case.data_sets:
                expected = _as_arrays(expected)
                actual = list(run(case.model, _as_arrays(inputs), fallback))
                assert len(actual) == len(expected), f"{len(actual)} outputs, not {len(expected)}"
                for e, a in zip(expected, actual, strict=True):
                    _assert_similar(e, a, rtol, atol)
    except Exception as error:  # any failure of a backend counts against it, never the suite
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {first}"[:300]
    return None


def run_qaas(model: onnx.ModelProto, inputs: list[Any], fallback: set[str]) -> Sequence[Any]:
    rep = qaas_backend.prepare(model)
    try:
        return rep.run(inputs)
    finally:
        fallback.update(rep.executor.fallback_ops)


def run_ort(model: onnx.ModelProto, inputs: list[Any], fallback: set[str]) -> Sequence[Any]:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs, strict=False)))


def collect_outcomes() -> list[CaseOutcome]:
    """Every default-domain node case through both backends."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    single = [c for c in cases if len(c.model.graph.node) == 1]
    subjects = {c.name: c.model.graph.node[0].op_type for c in single}
    outcomes = []
    for case in cases:
        if not _default_domain_only(case.model):
            continue
        op_types = frozenset(n.op_type for n in case.model.graph.node)
        subject = subjects.get(_EXPANDED.sub("", case.name), "")
        fallback: set[str] = set()
        ours, theirs = _outcome(run_qaas, case, fallback), _outcome(run_ort, case, set())
        dtypes = _dtypes(case.data_sets)
        outcome = CaseOutcome(
            case.name,
            subject,
            op_types,
            ours,
            theirs,
            frozenset(fallback),
            exotic=any(_exotic(d) for d in dtypes),
            wide_unsigned=bool(dtypes & WIDE_UNSIGNED),
        )
        outcomes.append(outcome)
    return outcomes


@pytest.fixture(scope="session")
def outcomes() -> list[CaseOutcome]:
    return collect_outcomes()


def test_backend_passes_at_least_as_many_cases_as_onnxruntime(
    outcomes: list[CaseOutcome],
) -> None:
    ours = sum(o.ours is None for o in outcomes)
    theirs = sum(o.ort is None for o in outcomes)
    assert len(outcomes) > 1000  # the wheel's cases were really collected
    lost = sorted(o.name for o in outcomes if o.ours is not None and o.ort is None)
    assert ours >= theirs, f"{ours} vs ORT {theirs}; ORT passes and we fail: {lost[:40]}"


@pytest.mark.parametrize("op_type", NAMED_OPS)
def test_every_case_of_a_named_op_passes_in_torch(
    outcomes: list[CaseOutcome], op_type: str
) -> None:
    """Each case of the op (expanded forms included) passes, and the op itself ran as a torch
    kernel, differentiable and quantizable, unless the case holds values torch cannot
    (float8, 4-bit, strings), which only the reference fallback computes."""
    cases = [o for o in outcomes if o.subject == op_type]
    assert cases, f"no node case tests {op_type}"
    failed = {o.name: o.ours for o in cases if o.ours is not None}
    assert not failed, failed
    by_reference = [o.name for o in cases if op_type in o.fallback and not o.exotic]
    assert not by_reference, f"{op_type} ran through onnx.reference, not torch: {by_reference}"


def test_every_case_with_16_to_64_bit_unsigned_integers_passes(
    outcomes: list[CaseOutcome],
) -> None:
    """Computed widened in torch, returned in the declared type."""
    cases = [o for o in outcomes if o.wide_unsigned]
    assert len(cases) > 20
    failed = {o.name: o.ours for o in cases if o.ours is not None}
    assert not failed, failed
