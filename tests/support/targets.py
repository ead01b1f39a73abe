"""The target of tests whose figures assume 8-bit weights.

The default ``onnxruntime-cpu`` puts the weights of Conv, Gemm and MatMul on 7-bit grids where
the CPU has no int8 dot product (``qaas_engine.targets``), so a figure computed by hand for
8-bit weights, or a threshold tuned on them, would depend on the CPU the suite runs on.
``onnxruntime-cpu:avx2`` keeps 8-bit grids (u8u8 kernels) and is exact on any CPU.
"""

EIGHT_BIT_WEIGHTS = "onnxruntime-cpu:avx2"
