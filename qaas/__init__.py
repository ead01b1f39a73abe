"""The qaas Python SDK: needs only httpx and pydantic.

import qaas

client = qaas.Client()  # QAAS_URL / QAAS_API_KEY, else the `qaas configure` file
job = client.submit("model.onnx", calibration="calibration.npz", evaluation="eval.npz")
job.wait()  # raises qaas.JobFailed if it fails
print(job.report["metrics"]["onnxruntime"]["top1"])
job.download("out/")

Names resolve on first use (PEP 562): ``import qaas.config`` or ``qaas.types``, as the CLI does
to build its parser, loads neither httpx nor the client, about 0.3 s of a local ``qaas quantize``
that never talks to a server.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qaas.client import Client
    from qaas.errors import (
        AuthError,
        Conflict,
        ConnectionFailed,
        InvalidRequest,
        JobFailed,
        NotFound,
        QaasError,
        RateLimited,
        ServerError,
        WaitTimeout,
    )
    from qaas.resources import Dataset, Job, Model
    from qaas.statuses import JOB_STATUSES, TERMINAL

_HOMES = {
    "Client": "qaas.client",
    **dict.fromkeys(
        [
            "AuthError",
            "Conflict",
            "ConnectionFailed",
            "InvalidRequest",
            "JobFailed",
            "NotFound",
            "QaasError",
            "RateLimited",
            "ServerError",
            "WaitTimeout",
        ],
        "qaas.errors",
    ),
    **dict.fromkeys(["Dataset", "Job", "Model"], "qaas.resources"),
    **dict.fromkeys(["JOB_STATUSES", "TERMINAL"], "qaas.statuses"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'qaas' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "JOB_STATUSES",
    "TERMINAL",
    "AuthError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "Model",
    "NotFound",
    "QaasError",
    "RateLimited",
    "ServerError",
    "WaitTimeout",
]
