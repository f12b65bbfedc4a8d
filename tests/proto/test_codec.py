"""Tensor (de)serialisation and the message checks behind INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from probewatch.proto.codec import CodecError, check_positions, decode_rows, decode_tensor, encode_array, encode_tensor
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.sidecar.status import grpc_status


@pytest.mark.parametrize("dtype,atol", [("float32", 0), ("float16", 1e-2), ("bfloat16", 2e-2)])
def test_roundtrip(dtype, atol):
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    msg = encode_array(x, dtype)
    assert list(msg.shape) == [5, 7] and len(msg.data) == x.size * (4 if dtype == "float32" else 2)
    np.testing.assert_allclose(decode_tensor(msg), x, atol=atol, rtol=atol)


def test_torch_bf16_and_fp16_keep_their_storage():
    t = torch.randn(3, 4)
    for dtype, code in ((torch.bfloat16, pb.DTYPE_BFLOAT16), (torch.float16, pb.DTYPE_FLOAT16)):
        msg = encode_tensor(t.to(dtype))
        assert msg.dtype == code and len(msg.data) == 24
        np.testing.assert_array_equal(decode_tensor(msg), t.to(dtype).float().numpy())
    # our bf16 rounding equals torch's
    assert encode_array(t.numpy(), "bfloat16").data == encode_tensor(t.to(torch.bfloat16)).data


def _code(exc_info) -> grpc.StatusCode:
    """The status the sidecar answers a codec refusal with (the codec itself knows no gRPC)."""
    return grpc_status(exc_info.value)


def test_bad_tensors_are_invalid_argument():
    good = encode_array(np.ones((2, 3), np.float32))
    with pytest.raises(CodecError, match="unsupported dtype") as e:
        decode_tensor(pb.Tensor(data=good.data, dtype=99, shape=[2, 3]))
    assert _code(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(CodecError, match="needs 24 bytes but the message carries 20"):
        decode_tensor(pb.Tensor(data=good.data[:20], dtype=pb.DTYPE_FLOAT32, shape=[2, 3]))
    with pytest.raises(CodecError, match="width 3 != expected 4"):
        decode_rows(good, 2, 4, "x")
    with pytest.raises(CodecError, match="2 rows but 3 positions"):
        decode_rows(good, 3, 3, "x")
    with pytest.raises(CodecError, match="must be 2-D"):
        decode_rows(pb.Tensor(data=good.data, dtype=pb.DTYPE_FLOAT32, shape=[6]), 6, 1, "x")
    for bad in (np.nan, np.inf, -np.inf):
        rows = np.ones((3, 3), np.float32)
        rows[1, 2] = bad
        with pytest.raises(CodecError, match=r"1 row\(s\) contain NaN or Inf \(first at row 1\)"):
            decode_rows(encode_array(rows), 3, 3, "x")


def test_positions_rules():
    assert check_positions([3, 4, 7], after=2, what="x").tolist() == [3, 4, 7]
    for positions, after, match in (
        ([], -1, "no positions"),
        ([-1], -2, "negative"),
        ([2, 2], -1, "strictly"),
        ([3, 1], -1, "strictly"),
        ([5], 5, "already sent"),
    ):
        with pytest.raises(CodecError, match=match):
            check_positions(positions, after, "x")
