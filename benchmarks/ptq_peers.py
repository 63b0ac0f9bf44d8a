"""The two post-training quantization peers of lowbit's PTQ benchmark (issue 9): PyTorch's own
PTQ (``torch.ao.quantization``, FX graph mode, x86 backend) and ONNX Runtime's
``quantize_static``. Both take the same float model and the same calibration images as lowbit's
PTQ, so one benchmark run can compare all three. Importing this module does no work.

Images are lowbit's convention, uint8 tensors (N, C, H, W) that the models scale to [0, 1] with
``/ 255`` before their own Normalize (a float tensor already in [0, 1] is taken as it is).

Seconds: the evaluation functions return them in their result dict; the functions that build
a model or a file record them in ``times[<function name>]`` (``ort_quantize_static``:
``times["ort_quantize_static/<method>"]``) when given a ``times`` dict.

torch.ao (``torch_ao_ptq``): ``get_default_qconfig_mapping("x86")``: weights int8 per-channel
symmetric (PerChannelMinMaxObserver), activations quint8 affine from a HistogramObserver with
``reduce_range=True`` (7-bit activations, fbgemm's guard against int16 overflow on CPUs without
VNNI); ``prepare_fx`` fuses Conv+BN(+ReLU) and Linear+ReLU and the residual add+ReLU
(``quantized.add_relu``), so lowbit's ResNet needs no FloatFunctional. The model's Normalize
stays float; the quantize step follows it. Runs with the quantized engine "x86" (fbgemm).
``torch.ao.quantization`` is deprecated in torch 2.13 (it warns) but works.

ONNX Runtime (``ort_quantize_static``): QDQ format, weights QInt8 (symmetric, per channel by
default; 7-bit on CPUs without VNNI: :func:`ort_reduce_range`), activations QUInt8
(asymmetric), calibration MinMax / Entropy / Percentile with ORT's
defaults except Entropy's bins (:data:`ORT_CALIB_OPTIONS`: ORT's default Entropy is MinMax;
Percentile: 99.999 %, 2048 bins), on the model exported by
``onnx_export_float`` (dynamo exporter, opset 20, BN folded into Conv by its optimizer) after
ORT's ``quant_pre_process`` (shape inference and graph optimization, as ORT recommends).
"""

from __future__ import annotations

import copy
import inspect
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ORT_METHODS = ("MinMax", "Entropy", "Percentile")
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (``/ 255``, as lowbit.data does); float ones as given."""
    images = torch.as_tensor(images)
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def batches(images: torch.Tensor, batch: int):
    """Float [0, 1] batches of ``images`` in storage order."""
    for start in range(0, len(images), batch):
        yield as_float(images[start:start + batch])


def _record(times: dict | None, key: str, started: float) -> float:
    seconds = time.perf_counter() - started
    if times is not None:
        times[key] = seconds
    return seconds


# ----------------------------------------------------------------------------- torch.ao

def torch_ao_ptq(float_model: nn.Module, calib_images: torch.Tensor, example: torch.Tensor,
                 calib_batch: int = 100, times: dict | None = None) -> nn.Module:
    """torch's PTQ, FX graph mode with the x86 backend: ``prepare_fx`` a copy of
    ``float_model`` (not modified) with ``get_default_qconfig_mapping("x86")``, run the
    calibration images through it in batches of ``calib_batch``, ``convert_fx``. Returns the
    int8 GraphModule (eval mode; CPU kernels of the "x86" quantized engine)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    started = time.perf_counter()
    if "x86" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"torch has no x86 quantized engine here: "
                           f"{torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = "x86"
    model = copy.deepcopy(float_model).eval()
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"),
                          example_inputs=(as_float(example),))
    with torch.no_grad():
        for x in batches(calib_images, calib_batch):
            prepared(x)
    quantized = convert_fx(prepared).eval()
    _record(times, "torch_ao_ptq", started)
    return quantized


def torch_evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   batch: int = 1000) -> dict:
    """Accuracy (0..1) of a torch model (float or torch.ao int8) on ``images``, with seconds."""
    started, correct = time.perf_counter(), 0
    model.eval()
    with torch.no_grad():
        for i, x in enumerate(batches(images, batch)):
            y = labels[i * batch:(i + 1) * batch]
            correct += int((model(x).argmax(dim=1) == y).sum())
    return {"accuracy": correct / len(labels), "seconds": time.perf_counter() - started,
            "n": len(labels), "batch": batch, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- ONNX / ORT

def onnx_export_float(float_model: nn.Module, example: torch.Tensor, path: str | Path,
                      dynamo: bool = True, opset: int | None = None,
                      times: dict | None = None) -> Path:
    """Export ``float_model`` (eval mode) to ONNX at ``path`` with input "input" (dynamic batch)
    and output "logits". ``dynamo=True`` (torch 2.13's default exporter, opset 20 unless
    ``opset``) folds BN into Conv; ``dynamo=False`` is the legacy TorchScript exporter (it
    warns: deprecated), which folds BN too. Returns ``path``."""
    started, path = time.perf_counter(), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(float_model).eval()
    example = as_float(example)
    if dynamo:
        param = next(iter(inspect.signature(model.forward).parameters))
        shapes = {"dynamic_shapes": {param: {0: torch.export.Dim("batch")}}}
    else:
        shapes = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    torch.onnx.export(model, (example,), str(path), dynamo=dynamo, opset_version=opset,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      external_data=False, **shapes)
    _record(times, "onnx_export_float", started)
    return path


def _reader(input_name: str, images: torch.Tensor, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        """The calibration images in batches of ``batch``, as {input name: float32 array}."""

        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> dict | None:
            if self.start >= len(images):
                return None
            x = as_float(images[self.start:self.start + batch]).numpy()
            self.start += batch
            return {input_name: x}

        def rewind(self) -> None:
            self.start = 0

    return ImageReader()


# ORT's calibrator options per method, where this peer departs from create_calibrator's
# defaults. Entropy: ORT's default 128 histogram bins with 128 quantized bins leave the KL search
# one candidate, the whole observed range, so "Entropy" gives MinMax's ranges (bit-identical
# scales here; quantize_static cannot pass num_bins). 2048 bins (TensorRT's histogram) with 256
# quantized bins (int8's 256 levels over the symmetric histogram range) make it a real search.
ORT_CALIB_OPTIONS: dict[str, dict] = {"Entropy": {"num_bins": 2048, "num_quantized_bins": 256}}


def ort_calibrate(onnx_path: str | Path, calib_images: torch.Tensor, method: str,
                  cache: str | Path, calib_batch: int = 100,
                  options: dict | None = None) -> Path:
    """Activation ranges of ``onnx_path`` from ``calib_images`` with ORT's calibrator for
    ``method`` (the one quantize_static creates, over the same op types), written to the
    calibration cache ``cache`` that quantize_static reads. ``options``: create_calibrator's
    extra_options (``num_bins``, ``num_quantized_bins``, ``percentile``, ``symmetric``, ...);
    None: :data:`ORT_CALIB_OPTIONS` for ``method``. Returns ``cache``."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if method not in ORT_METHODS:
        raise ValueError(f"method must be one of {', '.join(ORT_METHODS)}, got {method!r}")
    options = dict(ORT_CALIB_OPTIONS.get(method, {}) if options is None else options)
    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="ort.calib.") as tmp:
        calibrator = create_calibrator(
            Path(onnx_path), sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=getattr(CalibrationMethod, method), extra_options=options)
        calibrator.collect_data(_reader(input_name, calib_images, calib_batch))
        ranges = calibrator.compute_data()
    save_tensors_data(ranges, cache)
    return Path(cache)


def cpu_has_vnni() -> bool:
    """Does this x86 CPU have VNNI (avx512_vnni or avx_vnni in /proc/cpuinfo's flags)?"""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx512_vnni" in flags or "avx_vnni" in flags


def ort_reduce_range() -> bool:
    """The ``reduce_range`` ORT's int8 kernels need here: True without VNNI. ORT's U8S8
    kernels on AVX2/AVX-512 without VNNI (vpmaddubsw) saturate int16 sums of pairs of products;
    7-bit weights avoid it (ORT's quantization docs). Measured on ResNet-20 (AVX2, no VNNI):
    the same QDQ MinMax model scored 87.85 % run as DQ -> float op -> Q (no graph optimization)
    and 86.44 % in the fused int8 kernels; with reduce_range 87.63 % and 87.61 %."""
    return not cpu_has_vnni()


def ort_quantize_static(float_onnx: str | Path, calib_images: torch.Tensor,
                        out_path: str | Path, method: str = "MinMax", per_channel: bool = True,
                        calib_batch: int = 100, reduce_range: bool | None = None,
                        preprocess: bool = True, calib_options: dict | None = None,
                        times: dict | None = None) -> Path:
    """ONNX Runtime's static PTQ of ``float_onnx`` into ``out_path``: QDQ format, QInt8
    weights (per channel unless ``per_channel=False``), QUInt8 activations, calibrated with
    ``method`` ("MinMax", "Entropy" or "Percentile") on ``calib_images`` in batches of
    ``calib_batch`` (:func:`ort_calibrate`, ``calib_options``; its cache is
    ``<out_path>.calib.json``). ``preprocess``: ORT's ``quant_pre_process`` first (into
    ``<out_path>.pre.onnx``). ``reduce_range``: 7-bit weights; None: :func:`ort_reduce_range`
    (True on CPUs without VNNI, where 8-bit weights saturate ORT's kernels). Returns
    ``out_path``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    started, out_path = time.perf_counter(), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    reduce_range = ort_reduce_range() if reduce_range is None else reduce_range
    source = Path(float_onnx)
    if preprocess:
        source = out_path.with_suffix(".pre.onnx")
        quant_pre_process(str(float_onnx), str(source))
    cache = out_path.with_suffix(".calib.json")
    cache.unlink(missing_ok=True)
    ort_calibrate(source, calib_images, method, cache, calib_batch, calib_options)
    quantize_static(str(source), str(out_path), None, quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    calibration_cache_path=str(cache))
    _record(times, f"ort_quantize_static/{method}", started)
    return out_path


def ort_session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU InferenceSession with ``threads`` intra-op threads, one inter-op
    thread and no spinning (spinning pools oversubscribe 2 cores beside torch)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_evaluate(path: str | Path, images: torch.Tensor, labels: torch.Tensor,
                 batch: int = 1000, threads: int = 1) -> dict:
    """Accuracy (0..1) of the ONNX model at ``path`` in an onnxruntime session (``threads``
    intra-op threads) on ``images``; ``seconds`` is the inference time, ``session_seconds``
    the session creation (graph optimization) time."""
    started = time.perf_counter()
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    session_seconds, started, correct = time.perf_counter() - started, time.perf_counter(), 0
    for i, x in enumerate(batches(images, batch)):
        logits = session.run(None, {name: x.numpy()})[0]
        y = labels[i * batch:(i + 1) * batch].numpy()
        correct += int((logits.argmax(axis=1) == y).sum())
    return {"accuracy": correct / len(labels), "seconds": time.perf_counter() - started,
            "session_seconds": session_seconds, "n": len(labels), "batch": batch,
            "threads": threads}


def ort_float_evaluate(float_onnx: str | Path, float_model: nn.Module, images: torch.Tensor,
                       labels: torch.Tensor, batch: int = 1000, threads: int = 1,
                       tolerance_points: float = 0.05) -> dict:
    """Sanity check of the export: accuracy of the float ONNX model in onnxruntime and of
    ``float_model`` in torch on the same images, and the largest logit difference. Raises
    RuntimeError when the accuracies differ by more than ``tolerance_points`` (percentage
    points)."""
    result = ort_evaluate(float_onnx, images, labels, batch, threads)
    session, worst, correct = ort_session(float_onnx, threads), 0.0, 0
    name = session.get_inputs()[0].name
    float_model.eval()
    with torch.no_grad():
        for i, x in enumerate(batches(images, batch)):
            reference = float_model(x).numpy()
            worst = max(worst, float(np.abs(session.run(None, {name: x.numpy()})[0]
                                            - reference).max()))
            correct += int((reference.argmax(axis=1) == labels[i * batch:(i + 1) * batch]
                            .numpy()).sum())
    result |= {"torch_accuracy": correct / len(labels), "max_abs_logit_diff": worst}
    gap = 100 * abs(result["accuracy"] - result["torch_accuracy"])
    if gap > tolerance_points:
        raise RuntimeError(f"{float_onnx}: onnxruntime accuracy {100 * result['accuracy']:.2f} % "
                           f"differs from torch's {100 * result['torch_accuracy']:.2f} % by "
                           f"{gap:.2f} points (> {tolerance_points})")
    return result
