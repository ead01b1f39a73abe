"""The qaas Python SDK: needs only httpx and pydantic.

import qaas

client = qaas.Client()  # QAAS_URL / QAAS_API_KEY, else the `qaas configure` file
job = client.submit("model.onnx", calibration="calibration.npz", evaluation="eval.npz")
job.wait()  # raises qaas.JobFailed if it fails
print(job.report["metrics"]["onnxruntime"]["top1"])
job.download("out/")
"""

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
from qaas.types import JOB_STATUSES, TERMINAL

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
