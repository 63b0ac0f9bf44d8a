"""Export a lowbit model: the packed ``.lowbit`` file (:func:`export`) and ONNX.

``lowbit.export(model, "net.lowbit")`` writes the file that :func:`lowbit.runtime.load` runs;
the format is docs/format.md.
"""

from lowbit.exporter.graph import ExportError
from lowbit.exporter.lowbit_file import build, export, frozen_copy

__all__ = ["ExportError", "build", "export", "export_onnx", "frozen_copy"]


def export_onnx(model, path, **kwargs):
    """:func:`lowbit.exporter.onnx.export_onnx` (imported on use: it needs onnx)."""
    from lowbit.exporter.onnx import export_onnx as _export_onnx

    return _export_onnx(model, path, **kwargs)
