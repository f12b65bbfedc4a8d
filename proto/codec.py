"""Tensor (de)serialisation for the wire contract: raw little-endian bytes + dtype + shape.

Why raw bytes: a [n, 576] float32 block serialises as one memcpy, where `repeated float` would
cost a varint write per value and ~25% more bytes. Decoding is zero-copy for float32
(`np.frombuffer`) and one vectorised conversion for float16/bfloat16.

Every decode validates the message against what the sidecar expects and raises `CodecError`
naming the problem (a wrong dtype, shape/byte-length disagreement, wrong width, NaN/Inf rows);
the sidecar answers it INVALID_ARGUMENT (server/sidecar/status.py). Both sides import this module,
so it knows no gRPC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import numpy as np

from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

#: wire dtype -> (numpy storage dtype, item size, name)
_DTYPES: dict[int, tuple[np.dtype, int, str]] = {
    pb.DTYPE_FLOAT32: (np.dtype("<f4"), 4, "float32"),
    pb.DTYPE_FLOAT16: (np.dtype("<f2"), 2, "float16"),
    pb.DTYPE_BFLOAT16: (np.dtype("<u2"), 2, "bfloat16"),  # numpy has no bf16: carried as its bits
}
DTYPE_BY_NAME = {name: code for code, (_, _, name) in _DTYPES.items()}


class CodecError(ValueError):
    """A tensor message that does not hold what it claims (or what the receiver expects)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def invalid(message: str) -> CodecError:
    return CodecError(message)


def encode_array(array: np.ndarray, dtype: str = "float32") -> pb.Tensor:
    """numpy float array -> Tensor (converted to `dtype` on the way)."""
    code = DTYPE_BY_NAME[dtype]
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
        # round to nearest even, as torch does
        data = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    else:
        data = np.ascontiguousarray(array, dtype=_DTYPES[code][0])
    return pb.Tensor(data=data.tobytes(), dtype=cast("pb.DType", code), shape=list(array.shape))


def encode_tensor(tensor, dtype: str | None = None) -> pb.Tensor:
    """torch tensor (CPU) -> Tensor; keeps float16/bfloat16 storage when `dtype` is None."""
    import torch

    tensor = tensor.detach()
    if dtype is None:
        dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(tensor.dtype, "float32")
    if dtype == "bfloat16" and tensor.dtype == torch.bfloat16:
        data = tensor.contiguous().view(torch.int16).numpy().tobytes()
        return pb.Tensor(data=data, dtype=pb.DTYPE_BFLOAT16, shape=list(tensor.shape))
    if dtype == "float16" and tensor.dtype == torch.float16:
        return pb.Tensor(data=tensor.contiguous().numpy().tobytes(), dtype=pb.DTYPE_FLOAT16, shape=list(tensor.shape))
    return encode_array(tensor.to(torch.float32).numpy(), dtype)


def decode_tensor(msg: pb.Tensor, what: str = "payload") -> np.ndarray:
    """Tensor -> float32 numpy array of its shape; checks dtype and shape against the byte length."""
    entry = _DTYPES.get(msg.dtype)
    if entry is None:
        raise invalid(
            f"{what}: unsupported dtype {pb.DType.Name(msg.dtype) if msg.dtype in pb.DType.values() else msg.dtype}; "
            f"send one of {', '.join(n for _, _, n in _DTYPES.values())}"
        )
    storage, itemsize, name = entry
    shape = tuple(int(s) for s in msg.shape)
    if any(s < 0 for s in shape):
        raise invalid(f"{what}: negative dimension in shape {list(shape)}")
    expected = math.prod(shape) * itemsize
    if len(msg.data) != expected:
        raise invalid(
            f"{what}: shape {list(shape)} of {name} needs {expected} bytes but the message carries {len(msg.data)}"
        )
    flat = np.frombuffer(msg.data, dtype=storage)
    if name == "bfloat16":
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    elif name == "float16":
        flat = flat.astype(np.float32)
    return flat.reshape(shape)


def decode_rows(
    msg: pb.Tensor, n_rows: int, n_cols: int, what: str, max_abs: float = math.inf, limit: str = ""
) -> np.ndarray:
    """A [n_rows, n_cols] block of finite values within ±max_abs, or CodecError naming the problem
    (`limit`: the setting to name when the bound is exceeded).

    The check is two reductions (min and max; NaN propagates through both) with no temporary array:
    on multi-MiB chunks it is a large share of a stream reader's time, so only a failing block pays
    for the row-by-row diagnosis."""
    if len(msg.shape) != 2:
        raise invalid(f"{what}: payload must be 2-D [n_positions, width], got shape {list(msg.shape)}")
    array = decode_tensor(msg, what)
    if array.shape[0] != n_rows:
        raise invalid(f"{what}: payload has {array.shape[0]} rows but {n_rows} positions")
    if array.shape[1] != n_cols:
        raise invalid(f"{what}: payload width {array.shape[1]} != expected {n_cols}")
    if not array.size:
        return array
    lo, hi = float(array.min()), float(array.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
        raise invalid(f"{what}: {len(bad_rows)} row(s) contain NaN or Inf (first at row {int(bad_rows[0])})")
    peak = max(-lo, hi)
    if peak > max_abs:
        row = int(np.flatnonzero(np.abs(array).max(axis=1) > max_abs)[0])
        raise invalid(
            f"{what}: values up to {peak:.3g} (first at row {row}) exceed ±{max_abs:g} ({limit}); "
            "activations that large cannot be scored reliably"
        )
    return array


def check_positions(positions: Sequence[int], after: int, what: str) -> np.ndarray:
    """Positions must be non-negative, strictly increasing, and after the last one seen (`after`)."""
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size == 0:
        raise invalid(f"{what}: no positions")
    if pos[0] < 0:
        raise invalid(f"{what}: negative position {int(pos[0])}")
    if pos.size > 1 and not (np.diff(pos) > 0).all():
        raise invalid(f"{what}: positions must be strictly increasing")
    if pos[0] <= after:
        raise invalid(
            f"{what}: position {int(pos[0])} already sent (last position on this layer: {after}); "
            "positions must increase across chunks"
        )
    return pos
