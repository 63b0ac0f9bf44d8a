"""``lowbit bench``: how fast an exported network runs, measured against torch and ONNX Runtime
in one interleaved run (:mod:`lowbit.bench.net`), the raw fast-runtime kernels against torch's
fp32 matmul (:mod:`lowbit.bench.kernels`), and the runtime's cold start without torch
(:mod:`lowbit.bench.coldstart`). :mod:`lowbit.bench.torchnet` is the float torch twin of a
``.lowbit`` file that the torch and ONNX contenders run. Benchmarks, not tests: the machine's
load moves timings, so every comparison is a ratio measured in the same rounds.
"""

from lowbit.bench.coldstart import cold_start
from lowbit.bench.kernels import bench_kernels
from lowbit.bench.net import bench_file
from lowbit.bench.torchnet import torch_net

__all__ = ["bench_file", "bench_kernels", "cold_start", "torch_net"]
