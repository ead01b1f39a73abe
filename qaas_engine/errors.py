"""Errors a user can act on.

Every error raised for bad input derives from :class:`QaasInputError`; callers (CLI, worker, API)
map it to exit status 2 / a failed job / a 4xx, and show ``str(error)`` as the one-line cause.
Anything else escaping the engine is an internal bug.
"""


class QaasInputError(Exception):
    """The user's model, data or options are at fault; the message says what to fix."""


class ModelImportError(QaasInputError):
    """The upload is not a model we can read (not ONNX, truncated, unsafe, already quantized)."""


class UnsupportedOpError(QaasInputError):
    """The graph uses an op (or an op attribute) the engine cannot compute."""

    def __init__(self, op_type: str, node_name: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"unsupported op {op_type} at node '{node_name}'{detail}")
        self.op_type = op_type
        self.node_name = node_name
        self.reason = reason

    def __reduce__(self):  # crosses process boundaries (limited validation workers)
        return (UnsupportedOpError, (self.op_type, self.node_name, self.reason))


class DataError(QaasInputError):
    """Calibration/evaluation data do not fit the model (keys, shapes, dtypes, labels)."""


class SpecError(QaasInputError):
    """The quantization options contradict each other or the model."""


class Cancelled(Exception):
    """The caller asked to stop (between layers or epochs); not the user's fault, not a bug."""
