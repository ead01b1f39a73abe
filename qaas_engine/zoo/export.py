"""ONNX export of zoo models with the legacy TorchScript exporter, BatchNorm optionally kept.

The quantizer has to handle BatchNormalization both as a standalone node (to fold or quantize
itself) and already folded into the convolutions, so the export can produce either. The legacy
exporter is used because it is fast and keeps BN on request; the dynamo exporter is slow and
always folds BN.

How BN survives: with ``TrainingMode.EVAL`` the exporter runs an eval peephole pass that fuses
Conv+BatchNormalization. ``TrainingMode.PRESERVE`` with the model in eval mode skips that pass
yet still exports BN in inference form (``training_mode=0``, running statistics as inputs), and
constant folding of everything else stays on.
"""

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

OUTPUT_NAME = "logits"
DEFAULT_INPUT_SHAPE = (2, 1, 8, 8)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_name: str = "input",
    opset: int = 17,
    keep_batchnorm: bool = True,
    dynamic_batch: bool = True,
    example_input: torch.Tensor | None = None,
) -> Path:
    """Export ``model`` (in eval mode) to ``path`` with output ``logits``; return the path.

    ``keep_batchnorm`` keeps standalone inference-form BatchNormalization nodes; otherwise BN is
    folded into the preceding Conv. ``example_input`` defaults to a (2, 1, 8, 8) tensor; a batch
    of 2 avoids batch-1 specializations in the trace.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if example_input is None:
        example_input = torch.randn(DEFAULT_INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    dynamic_axes = {input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # The legacy exporter warns that it is deprecated and, under PRESERVE, that constant
            # folding might fold training-only ops; neither applies to an eval-mode export.
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message=r".*remove usage of this function")
            warnings.filterwarnings("ignore", message=r".*constant folding be turned off")
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                training=mode,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    proto = onnx.load(str(path))
    _inline_initializer_identities(proto)
    onnx.save(proto, str(path))
    return path


def _inline_initializer_identities(proto: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer.

    The exporter deduplicates bit-identical parameters (e.g. a fresh BN's weight and running_var
    are both ones) and re-creates the duplicates with Identity nodes; consumers expect BN and Conv
    parameters to be initializers, so turn them back into initializers.
    """
    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    outputs = {out.name for out in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            array = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def max_abs_diff_vs_onnxruntime(model: nn.Module, path: str | Path, x: np.ndarray) -> float:
    """Largest |torch - onnxruntime| over the logits for input ``x``: proves the export is exact."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    x = np.asarray(x, dtype=np.float32)
    (got,) = sess.run([OUTPUT_NAME], {input_name: x})
    model.eval()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return float(np.abs(got - want).max())
