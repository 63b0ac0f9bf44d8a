"""The errors the runtime raises. Like every lowbit error they subclass
:class:`lowbit.errors.LowbitError` (a module that imports nothing, so the runtime still needs
only numpy and the standard library) and a builtin, so callers can catch either."""

from lowbit.errors import LowbitError


class FormatError(LowbitError, ValueError):
    """A ``.lowbit`` file (or packed data) that is not what the format says: bad magic, an
    unknown version or encoding, a malformed header, a section out of bounds, truncated data,
    a checksum mismatch. The message names the file, and the section, where it applies."""
