"""The contenders of ``lowbit bench net.lowbit``: one network, six engines, all built from the
``.lowbit`` file alone.

- ``torch_fp32``: :func:`lowbit.bench.torchnet.torch_net`, the float twin of the file's graph
  (decoded weights, float ops, activation quantizers as the clip to their range); its size is
  that of ``torch.save(state_dict)``.
- ``torch_int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` of that module on
  ``nn.Linear`` (qint8 weights per tensor, activations quantized per batch); convolutions stay
  float (dynamic quantization has no convolution).
- ``ort_fp32``: the float twin exported by ``torch.onnx.export(..., dynamo=False)`` (opset 17,
  dynamic batch), run by ONNX Runtime.
- ``ort_int8_qdq``: ``onnxruntime.quantization.quantize_static`` of that ONNX model (after
  ``quant_pre_process``, ORT's shape inference and optimisation): QDQ
  format, per-channel s8 weights, u8 activations (the fast x86 pair), MinMax calibration on
  ``calibration`` inputs (a few batches of the dataset's train split, or random inputs).
- ``lowbit_reference``: ``lowbit.runtime.load(path)`` (numpy).
- ``lowbit_fast``: ``lowbit.runtime.load(path, fast=True)`` (numba kernels where a kernel
  module serves the layer; ``kernels`` says which).

Every ONNX Runtime session: ``intra_op_num_threads`` = the bench's threads, one inter-op
thread, ``session.intra_op.allow_spinning = 0`` (spinning pools oversubscribe 2 cores beside
torch, shared PERFORMANCE.md), default graph optimisations (they fuse QDQ into QLinear ops).
Each contender's ``predict(x)`` maps a float32 numpy batch to float32 logits.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NAMES = ("torch_fp32", "torch_int8_dynamic", "ort_fp32", "ort_int8_qdq", "lowbit_reference",
         "lowbit_fast")
OPSET = 17


@dataclass
class Contender:
    name: str
    engine: str                      # what runs it, in words
    predict: Callable[[np.ndarray], np.ndarray]
    file_bytes: int                  # its model file: .lowbit, .onnx or torch.save(state_dict)
    info: dict = field(default_factory=dict)


def _state_bytes(module) -> int:
    import torch

    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def _torch_predict(module) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return predict


def ort_session(path: str | Path, threads: int):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and no spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: not its notes on unused initializers
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_predict(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def export_float_onnx(net, path: Path, input_shape) -> Path:
    """``net`` (a :class:`GraphNet`) as float ONNX, batch dimension dynamic."""
    import torch

    example = torch.zeros(2, *input_shape)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def quantize_onnx_int8(src: Path, dst: Path, calibration: list[np.ndarray]) -> Path:
    """Static QDQ int8 of the float ONNX model ``src`` (module doc), calibrated on the batches
    of ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x}

    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ort.set_default_logger_severity(3)
    pre = dst.with_name(f"{dst.stem}.pre.onnx")
    quant_pre_process(str(src), str(pre))  # shape inference + optimisation, as ORT advises
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    return dst


def build_contenders(path: str | Path, input_shape, calibration: list[np.ndarray],
                     threads: int, workdir: Path,
                     names: tuple[str, ...] = NAMES) -> dict[str, Contender]:
    """The contenders of ``names`` for the file at ``path`` (module doc); ONNX files go to
    ``workdir``."""
    import torch

    import lowbit.runtime as rt
    from lowbit.bench.torchnet import torch_net
    from lowbit.runtime.fast import kernels

    path, workdir = Path(path), Path(workdir)
    size = path.stat().st_size
    ref = rt.load(path)
    net = torch_net(ref)
    out: dict[str, Contender] = {}
    if "torch_fp32" in names:
        out["torch_fp32"] = Contender("torch_fp32", f"torch {torch.__version__} eager, fp32",
                                      _torch_predict(net), _state_bytes(net))
    if "torch_int8_dynamic" in names:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch.ao.quantization is deprecated (still works)
            warnings.simplefilter("ignore")
            qnet = quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
        out["torch_int8_dynamic"] = Contender(
            "torch_int8_dynamic", f"torch quantize_dynamic (Linear qint8, engine "
            f"{torch.backends.quantized.engine}; convolutions float)", _torch_predict(qnet),
            _state_bytes(qnet))
    if "ort_fp32" in names or "ort_int8_qdq" in names:
        import onnxruntime as ort

        fp32 = export_float_onnx(net, workdir / "fp32.onnx", input_shape)
        if "ort_fp32" in names:
            out["ort_fp32"] = Contender("ort_fp32", f"onnxruntime {ort.__version__} fp32",
                                        _ort_predict(fp32, threads), fp32.stat().st_size)
        if "ort_int8_qdq" in names:
            int8 = quantize_onnx_int8(fp32, workdir / "int8.onnx", calibration)
            out["ort_int8_qdq"] = Contender(
                "ort_int8_qdq", f"onnxruntime {ort.__version__} quantize_static QDQ "
                "(per-channel s8 weights, u8 activations, MinMax)", _ort_predict(int8, threads),
                int8.stat().st_size)
    if "lowbit_reference" in names:
        out["lowbit_reference"] = Contender("lowbit_reference", "lowbit.runtime (numpy)", ref,
                                            size, {"paths": {ly.name: ly.path
                                                             for ly in ref.layers}})
    if "lowbit_fast" in names:
        fast = rt.load(path, fast=True)
        out["lowbit_fast"] = Contender("lowbit_fast", "lowbit.runtime fast=True (numba)", fast,
                                       size, {"kernels": kernels(fast)})
    return out
