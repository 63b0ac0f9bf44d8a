"""lowbit's runtime: read a packed ``.lowbit`` file and run it, with numpy only.

Nothing here imports torch or the training code (tests/runtime/test_no_torch.py), so a device
needs numpy and the file. So far: bit packing (:mod:`lowbit.runtime.pack`) and the file's
container layer (:mod:`lowbit.runtime.container`, docs/format.md).
"""

from lowbit.runtime.container import (
    Container,
    read_container,
    read_header,
    write_container,
)
from lowbit.runtime.errors import FormatError
from lowbit.runtime.pack import pack_bits, pack_codes, packed_bytes, unpack_bits, unpack_codes

__all__ = [
    "Container",
    "FormatError",
    "read_container",
    "read_header",
    "write_container",
    "pack_bits",
    "pack_codes",
    "packed_bytes",
    "unpack_bits",
    "unpack_codes",
]
