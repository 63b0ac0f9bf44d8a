"""lowbit's runtime: read a packed ``.lowbit`` file and run it, with numpy only.

Nothing here imports torch or the training code (tests/runtime/test_no_torch.py), so a device
needs numpy and the file: ``net = lowbit.runtime.load("net.lowbit"); logits = net(x)``.
Layers: bit packing (:mod:`~lowbit.runtime.pack`), the container (:mod:`~lowbit.runtime.container`,
docs/format.md), codebook records (:mod:`~lowbit.runtime.records`), operators
(:mod:`~lowbit.runtime.ops`), weight layers and their integer / binary / lookup paths
(:mod:`~lowbit.runtime.layers`) and the graph (:mod:`~lowbit.runtime.model`).
"""

from lowbit.runtime.container import (
    Container,
    read_container,
    read_header,
    write_container,
)
from lowbit.runtime.errors import FormatError
from lowbit.runtime.model import Model, load
from lowbit.runtime.pack import pack_bits, pack_codes, packed_bytes, unpack_bits, unpack_codes

__all__ = [
    "Container",
    "FormatError",
    "Model",
    "load",
    "read_container",
    "read_header",
    "write_container",
    "pack_bits",
    "pack_codes",
    "packed_bytes",
    "unpack_bits",
    "unpack_codes",
]
