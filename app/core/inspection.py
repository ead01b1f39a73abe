"""Untrusted uploads are parsed by the engine in a separate process with a memory cap and a
timeout, never in the API process: tiny ONNX files can exhaust memory or time in shape
inference, and a crash there must cost one child process, not the API."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from app.core.errors import InvalidInput
from app.core.limits import limit_process


def _limit_memory(max_bytes: int) -> None:
    limit_process(max_bytes)
    import qaas_engine  # noqa: F401  (import once per child, not per upload)


def _inputs_meta(model: Any) -> list[dict[str, Any]]:
    from qaas_engine import model_inputs

    return [
        {"name": spec.name, "dtype": spec.dtype.name, "shape": list(spec.shape)}
        for spec in model_inputs(model)
    ]


def inspect_model(
    path: str, converted_path: str, max_tensor_elements: int, list_external_data: bool = False
) -> dict[str, Any]:
    """Engine import checks; a ``.pt2`` archive is converted to ONNX here, once. With
    ``list_external_data``, also the external-data locations the model's tensors name."""
    import onnx

    from qaas_engine import QaasInputError, import_model

    try:
        imported = import_model(path)
    except QaasInputError as error:
        return {"error": str(error)}
    onnx_upload = imported.source_format == "onnx"
    locations = _external_locations(path) if list_external_data and onnx_upload else []
    oversized = _oversized_tensor(imported.model, max_tensor_elements)
    if oversized:
        return {"error": oversized}
    converted = None
    if imported.source_format != "onnx":
        onnx.save(imported.model, converted_path)
        converted = converted_path
    return {
        "source_format": imported.source_format,
        "opset": imported.original_opset,
        "inputs": _inputs_meta(imported.model),
        "notes": list(imported.notes),
        "converted_path": converted,
        "external_data": locations,
    }


def _external_locations(path: str) -> list[str]:
    """Where an ONNX file's tensors keep their data (read without loading it)."""
    import onnx
    from onnx import external_data_helper

    model = onnx.load_model(path, load_external_data=False)
    return sorted(
        {
            external_data_helper.ExternalDataInfo(tensor).location
            for tensor in external_data_helper._get_all_tensors(model)
            if external_data_helper.uses_external_data(tensor)
        }
    )


def _oversized_tensor(model: Any, max_elements: int) -> str | None:
    """The first tensor whose inferred static shape is too large to ever compute, described."""
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        sizes = [d.dim_value for d in dims if d.HasField("dim_value")]
        elements = 1
        for size in sizes:
            elements *= size
        if sizes and elements > max_elements:
            return (
                f"tensor '{value.name}' would hold {elements} elements (shape {sizes}), more "
                f"than the limit of {max_elements}; the model declares dimensions too large to "
                "run (a shape-inference bomb or a wrong export)"
            )
    return None


def inspect_dataset(path: str) -> dict[str, Any]:
    """An ``.npz`` of plain numeric arrays (never unpickled): record names, shapes and dtypes."""
    import zipfile

    import numpy as np

    if not zipfile.is_zipfile(path):
        return {"error": "not an .npz archive (numpy.savez)"}
    try:
        arrays = {}
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                value = archive[key]  # members not stored as .npy come back as raw bytes
                if not isinstance(value, np.ndarray):
                    return {"error": f"archive member '{key}' is not a numpy array (.npy)"}
                arrays[key] = {"shape": list(value.shape), "dtype": value.dtype.name}
    except ValueError as error:
        if "pickle" in str(error).lower():
            return {"error": "holds Python objects (pickled arrays); save plain numeric arrays"}
        return {"error": f"not a valid .npz: {error}"}
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        return {"error": f"damaged .npz: {error}"}
    if not arrays:
        return {"error": "the archive holds no arrays"}
    for key, meta in arrays.items():
        if meta["dtype"] == "object" or not meta["shape"]:
            return {"error": f"array '{key}' is not a numeric array with a sample axis"}
    return {"arrays": arrays}


def check_dataset_fits(path: str, inputs: list[dict[str, Any]], role: str) -> dict[str, Any]:
    """The engine's own data checks against a model's recorded inputs."""
    import numpy as np

    from qaas_engine import QaasInputError, load_npz
    from qaas_engine.data import InputSpec

    specs = [
        InputSpec(item["name"], np.dtype(item["dtype"]), tuple(item["shape"])) for item in inputs
    ]
    try:
        dataset = load_npz(path, specs, role=role)
    except QaasInputError as error:
        return {"error": str(error)}
    return {"num_samples": dataset.num_samples, "labels": dataset.labels is not None}


class Inspector:
    """A small pool of limited child processes; one that hangs or dies is replaced."""

    def __init__(self, *, processes: int, memory_bytes: int, timeout_s: float) -> None:
        self.processes = processes
        self.memory_bytes = memory_bytes
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_limit_memory,
                initargs=(self.memory_bytes,),
            )
        return self._pool

    def warm_up(self) -> None:
        self._executor().submit(int)

    async def run(self, what: str, fn: Any, *args: Any) -> dict[str, Any]:
        """Run ``fn`` in a child; a time-out, crash or memory blow-up is the upload's fault."""
        future = self._executor().submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            self._reset()
            raise InvalidInput(
                f"{what}: checking it took longer than {self.timeout_s:g} s"
            ) from None
        except (BrokenProcessPool, MemoryError):
            self._reset()
            raise InvalidInput(
                f"{what}: checking it exhausted the memory limit ({self.memory_bytes} bytes) "
                "or crashed the checker"
            ) from None

    def _reset(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor cannot cancel a running call: end its children ourselves.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
