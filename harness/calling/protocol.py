"""The wire format between the harness and its sandbox workers: messages, tensors, shared memory.

Both sides import this module; it imports nothing of the harness but torch, so a worker
starts quickly. Requests (harness → worker) are pickled: the worker trusts the harness.
Replies (worker → harness) come from a process that runs user code, so they are never
unpickled: a reply is a JSON header followed by raw byte buffers, and every tensor in it
is rebuilt from its bytes after its size is checked against its description.

A tensor crosses the boundary with its exact layout: dtype, size, strides, storage offset
and the whole storage it reaches (``layout.storage_extent`` elements), so a transposed,
sliced or expanded input arrives as it was drawn. Small storages travel inside the
message; large ones (``INLINE_LIMIT`` bytes and up) through an ``Arena``, a shared-memory
file both processes map, so an (8, 256000) float32 case costs a memcpy, not a pipe transfer.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.calling.layout import storage_extent

__all__ = [
    "DTYPES",
    "INLINE_LIMIT",
    "Arena",
    "Packer",
    "ProtocolError",
    "decode_reply",
    "encode_reply",
    "owned_tensor",
    "storage_bytes",
    "storage_extent",
    "unpack_bytes",
    "unpack_tensor",
]

INLINE_LIMIT = 256 * 1024  # bytes; larger storages go through the arena

# Every dtype a tensor may cross the boundary in, by name (replies are checked against it).
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in (
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
        "int8", "int16", "int32", "int64", "uint8", "bool",
    )
}  # fmt: skip
_NAMES = {dtype: name for name, dtype in DTYPES.items()}

# Captured at import, before any user code runs in a worker: a user's patch of these
# module attributes cannot change how tensors are copied across.
_frombuffer = torch.frombuffer
_empty = torch.empty
_HEADER = struct.Struct("<I")


class ProtocolError(RuntimeError):
    """A reply that does not follow the protocol (a worker that wrote garbage)."""


class Arena:
    """A shared-memory file mapped by the harness and one worker; it only grows.

    Linux's ``memfd_create`` makes it anonymous (freed when both sides close it); elsewhere
    an unlinked temporary file serves. Either side may grow it; the other remaps on use.
    """

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("ce-harness-arena")
            else:  # pragma: no cover - macOS and others
                with tempfile.TemporaryFile() as handle:
                    fd = os.dup(handle.fileno())
        self.fd = fd
        self._map: mmap.mmap | None = None

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def buffer(self, nbytes: int = 0) -> mmap.mmap:
        """The mapping, grown to at least ``nbytes`` (in whole MiB, doubling)."""
        size = self.size()
        if size < nbytes:
            size = max(nbytes, 2 * size, 1 << 20)
            size = -(-size // (1 << 20)) << 20
            os.ftruncate(self.fd, size)
        if self._map is None or len(self._map) != size:
            # an old mapping still exported to a tensor is closed when that tensor goes
            self._map = mmap.mmap(self.fd, size)
        return self._map

    def close(self) -> None:
        self._map = None
        with contextlib.suppress(OSError):
            os.close(self.fd)


def storage_bytes(t: torch.Tensor):
    """The storage elements 0 .. extent-1 that ``t`` reaches, as a flat uint8 NumPy array (no copy on the CPU).

    Bytes are moved and compared with NumPy and memoryviews, single-threaded memcpy and
    memcmp: torch's own copies of large tensors start OpenMP threads, whose wake-up on a
    busy machine costs milliseconds.
    """
    flat = t.detach().as_strided((storage_extent(t),), (1,), 0)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    if flat.is_neg() or flat.is_conj():
        flat = flat.resolve_neg().resolve_conj()
    return flat.contiguous().view(torch.uint8).numpy()


def owned_tensor(raw, dtype: torch.dtype, shape, stride, offset: int) -> torch.Tensor:
    """A fresh CPU tensor over a private copy of ``raw`` (bytes-like), laid out as given."""
    if len(raw) == 0:
        return torch.empty_strided(tuple(shape), tuple(stride), dtype=dtype)
    storage = _frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
    return storage.as_strided(tuple(shape), tuple(stride), offset)


@dataclass
class Packer:
    """Describes tensors for one message, placing their bytes inline or in the arena.

    ``cursor`` is where the next arena tensor goes; each message starts at ``base``.
    """

    arena: Arena | None
    base: int = 0
    cursor: int = 0
    buffers: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cursor = self.base

    def pack(self, t: torch.Tensor, *, exact_layout: bool = True) -> dict:
        """A JSON-safe description of ``t``; ``exact_layout=False`` sends its values contiguously."""
        if not exact_layout:
            t = t.detach().contiguous()
        raw = storage_bytes(t)
        spec = {
            "dtype": _NAMES[t.dtype],
            "shape": list(t.shape),
            "stride": list(t.stride()),
            "offset": t.storage_offset(),
            "nbytes": raw.size,
        }
        if raw.size >= INLINE_LIMIT and self.arena is not None:
            start = self.cursor
            buffer = self.arena.buffer(start + raw.size)
            buffer[start : start + raw.size] = raw  # one memcpy into shared memory
            self.cursor = start + raw.size
            spec["arena"] = start
        else:
            spec["inline"] = len(self.buffers)
            self.buffers.append(raw.tobytes())
        return spec


def unpack_bytes(spec: dict, buffers: list, arena: Arena | None):
    """(dtype, shape, stride, offset, raw bytes-like) of a tensor description, checked.

    Raises ProtocolError when the description does not fit its bytes.
    """
    try:
        dtype = DTYPES[spec["dtype"]]
        shape, stride, offset, nbytes = spec["shape"], spec["stride"], int(spec["offset"]), int(spec["nbytes"])
        if not all(isinstance(v, int) and v >= 0 for v in [*shape, *stride, offset, nbytes]) or len(shape) != len(
            stride
        ):
            raise ProtocolError(f"malformed tensor description {spec!r}")
        itemsize = _empty((), dtype=dtype).element_size()
        numel = 1
        for n in shape:
            numel *= n
        extent = 0 if numel == 0 else offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
        if extent * itemsize != nbytes:
            raise ProtocolError(f"tensor description {spec!r} does not match its {nbytes} bytes")
        if nbytes == 0:
            raw = b""
        elif "inline" in spec:
            raw = buffers[int(spec["inline"])]
            if len(raw) != nbytes:
                raise ProtocolError(f"tensor bytes: got {len(raw)}, expected {nbytes}")
        elif "arena" in spec and arena is not None:
            start = int(spec["arena"])
            buffer = arena.buffer()
            if start < 0 or start + nbytes > len(buffer):
                raise ProtocolError("tensor bytes lie outside the arena")
            raw = memoryview(buffer)[start : start + nbytes]
        else:
            raise ProtocolError(f"tensor description {spec!r} says nowhere where its bytes are")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProtocolError(f"malformed tensor description: {type(exc).__name__}: {exc}") from None
    return dtype, shape, stride, offset, raw


def unpack_tensor(spec: dict, buffers: list, arena: Arena | None) -> torch.Tensor:
    """A fresh CPU tensor, owned by the caller, laid out exactly as ``spec`` describes.

    Raises ProtocolError when the description does not fit its bytes.
    """
    dtype, shape, stride, offset, raw = unpack_bytes(spec, buffers, arena)
    try:
        return owned_tensor(raw, dtype, shape, stride, offset)
    finally:
        if isinstance(raw, memoryview):
            raw.release()  # the arena may be remapped later


def encode_reply(header: dict[str, Any], buffers: list[bytes] = ()) -> bytes:
    """One reply message: a length-prefixed JSON header, then the buffers back to back."""
    head = json.dumps({**header, "sizes": [len(b) for b in buffers]}, allow_nan=True).encode()
    return b"".join([_HEADER.pack(len(head)), head, *buffers])


def decode_reply(message: bytes) -> tuple[dict, list[bytes]]:
    """(header, buffers) of a reply; ProtocolError when it is not one."""
    try:
        (length,) = _HEADER.unpack_from(message, 0)
        header = json.loads(message[4 : 4 + length])
        if not isinstance(header, dict):
            raise ValueError("the header is not an object")
        buffers, at = [], 4 + length
        for size in header.get("sizes", []):
            if not isinstance(size, int) or size < 0 or at + size > len(message):
                raise ValueError("buffer sizes do not match the message")
            buffers.append(message[at : at + size])
            at += size
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"unreadable reply from the sandbox: {exc}") from None
    return header, buffers
