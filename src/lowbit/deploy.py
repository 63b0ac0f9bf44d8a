"""The file-level deployment verbs behind ``lowbit export``, ``lowbit eval`` (of ``.lowbit`` and
``.onnx`` files) and ``lowbit inspect``, and the export that ends every training / PTQ run.

- :func:`export_file`: a ``model.pt`` -> ``net.lowbit`` (or ``net.onnx``), the architecture and
  dataset recorded in the header, so that ``lowbit eval net.lowbit`` knows its test set.
- :func:`evaluate_exported`: test accuracy of a ``.lowbit`` file through lowbit's numpy runtime,
  or of an ``.onnx`` file through ONNX Runtime (one thread, no spinning).
- :func:`export_run`: after training, ``model.lowbit`` beside ``model.pt``; its size is the
  summary's ``packed_bytes`` (the estimate from the codebooks stays as
  ``packed_bytes_estimate``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _input_shape(kwargs: dict) -> list[int]:
    size = kwargs.get("image_size", 0)
    hw = [size, size] if isinstance(size, int) else list(size)
    return [int(kwargs.get("in_channels", 1)), *hw]


def export_file(model_file: str | Path, out: str | Path, onnx: bool = False) -> dict:
    """Export the model of ``model_file`` (written by ``lowbit train`` / ``lowbit ptq``) to
    ``out``; returns ``{"file", "bytes", "format"}`` (and the ``inspect`` summary for
    ``.lowbit``)."""
    from lowbit.experiment import load_model
    from lowbit.exporter import export

    net, blob = load_model(model_file)
    info = {"architecture": blob["model_kwargs"], "dataset": blob.get("dataset")}
    shape = _input_shape(blob["model_kwargs"])
    out = Path(out)
    if onnx:
        from lowbit.exporter.onnx import export_onnx

        export_onnx(net, out, input_shape=shape)
        if blob.get("dataset"):
            _onnx_metadata(out, {"lowbit.dataset": blob["dataset"]})
        return {"file": str(out), "bytes": out.stat().st_size, "format": "onnx"}
    export(net, out, input_shape=shape, model_info=info)
    from lowbit.runtime.inspect import summary

    return {"file": str(out), "bytes": out.stat().st_size, "format": "lowbit",
            "summary": summary(out)}


def _onnx_metadata(path: Path, props: dict[str, str]) -> None:
    """Add ``props`` to an ONNX file's metadata_props (rewritten atomically)."""
    import os

    import onnx

    m = onnx.load(str(path))
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, path)


def _dataset_of(path: Path, dataset: str | None) -> str:
    if dataset:
        return dataset
    if path.suffix == ".onnx" and path.exists():
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                 .metadata_props}
        if props.get("lowbit.dataset"):
            return props["lowbit.dataset"]
    if path.suffix == ".lowbit":
        from lowbit.runtime.container import read_header

        found = (read_header(path)["meta"].get("model") or {}).get("dataset")
        if found:
            return found
    raise ValueError(f"{path}: give --dataset (the file does not record its dataset)")


def _onnx_predict(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ORT's default fusions change what a correct QDQ graph computes: DequantizeLinear ->
    # MatMul becomes MatMulNBits with int8 activations, QDQ patterns become QGemm (XNOR 89 %
    # argmax agreement on LeNet300 with them, 100 % without; tests/exporter/test_onnx.py)
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def evaluate_exported(path: str | Path, dataset: str | None = None,
                      data_dir: str | None = None, batch_size: int = 500) -> dict[str, Any]:
    """Test accuracy of a ``.lowbit`` (lowbit runtime) or ``.onnx`` (ONNX Runtime) file."""
    from lowbit.data import load_dataset

    path = Path(path)
    if path.suffix not in (".lowbit", ".onnx"):
        raise ValueError(f"{path}: expected a .lowbit or .onnx file")
    name = _dataset_of(path, dataset)
    if path.suffix == ".lowbit":
        import lowbit.runtime as rt

        predict, engine = rt.load(path), "lowbit.runtime (numpy reference)"
    else:
        predict, engine = _onnx_predict(path), "onnxruntime"
    test = load_dataset(name, "test", data_dir)
    images, labels = test.images.numpy(), test.labels.numpy()
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = images[i:i + batch_size].astype(np.float32) / np.float32(255)
        correct += int((np.asarray(predict(x)).argmax(1) == labels[i:i + batch_size]).sum())
    return {"file": str(path), "engine": engine, "dataset": name,
            "test_accuracy": correct / len(labels), "samples": int(len(labels)),
            "file_bytes": path.stat().st_size}


def export_run(net, out_dir: Path, kwargs: dict, dataset: str | None) -> dict[str, Any]:
    """``out_dir/model.lowbit`` for a finished run: ``{"packed_bytes": its size}``, or, if the
    model holds something the runtime cannot run, ``{"export_error": why}``."""
    from lowbit.errors import LowbitError
    from lowbit.exporter import export

    path = Path(out_dir) / "model.lowbit"
    try:
        export(net, path, input_shape=_input_shape(kwargs),
               model_info={"architecture": kwargs, "dataset": dataset})
    except (LowbitError, NotImplementedError) as e:
        log.warning("model.lowbit not written: %s", e)
        return {"export_error": str(e)}
    return {"packed_bytes": path.stat().st_size, "packed_file": path.name}
