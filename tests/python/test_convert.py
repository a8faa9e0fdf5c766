"""bn_convert against torch: float32 to bfloat16 and float16 gives torch's bits (its
round-to-nearest-even, subnormals kept; a NaN for a NaN) for every bfloat16 interval's
deciding bottom halves, every float16 value's neighbourhood and a million random float32 bit
patterns; bfloat16 and float16 to float32 gives torch's float32 for all 65536 values of each,
NaNs bit for bit (float16's made quiet, as torch does); and the errors."""

import ctypes

import numpy as np
import pytest
import torch

from bnorm import _lib

TYPES = {"bfloat16": (_lib.BN_BFLOAT16, torch.bfloat16), "float16": (_lib.BN_FLOAT16, torch.float16)}


def convert(src, src_dtype, dst_dtype, dst_numpy_type):
    src = np.ascontiguousarray(src)
    out = np.zeros(src.shape, dst_numpy_type)
    _lib.check(_lib.lib.bn_convert(out.ctypes.data, dst_dtype, src.ctypes.data, src_dtype,
                                   src.size), "bn_convert")
    return out


def torch_bits(f32, torch_dtype):
    """torch's conversion of the float32 array f32, as uint16 bits."""
    return torch.from_numpy(f32).to(torch_dtype).view(torch.int16).numpy().view(np.uint16)


def probes():
    """float32 values that decide the rounding of both types, and random bit patterns."""
    top = np.arange(1 << 16, dtype=np.uint32) << 16
    bottoms = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    bf16_cases = (top[:, None] | bottoms[None, :]).ravel()
    halves = torch.arange(0, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16)
    v = halves.to(torch.float32).numpy()
    w = np.append(v[1:], np.float32(65536))
    mid = (v + w) / 2
    f16_cases = np.concatenate([v, mid, np.nextafter(mid, np.float32(0)),
                                np.nextafter(mid, np.float32(np.inf)),
                                np.nextafter(v, np.float32(np.inf))]).astype(np.float32)
    f16_cases = np.concatenate([f16_cases, -f16_cases]).view(np.uint32)
    rng = np.random.default_rng(11)
    random = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([bf16_cases, f16_cases, random]).view(np.float32)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_float32_to_16_bits_is_torchs(name):
    bn_type, torch_type = TYPES[name]
    f = probes()
    got = convert(f, _lib.BN_FLOAT32, bn_type, np.uint16)
    want = torch_bits(f, torch_type)
    # a NaN is a NaN: torch's vectorized bfloat16 conversion gives 0xFFFF, its scalar one and
    # ours 0x7FC0
    nan = np.isnan(f)
    as_float = convert(got, bn_type, _lib.BN_FLOAT32, np.float32)
    assert np.isnan(as_float[nan]).all()
    got, want = got[~nan], want[~nan]
    wrong = np.flatnonzero(got != want)
    assert wrong.size == 0, "%d of %d differ, first float bits 0x%08x: ours 0x%04x, torch 0x%04x" % (
        wrong.size, got.size, f[~nan].view(np.uint32)[wrong[0]], got[wrong[0]], want[wrong[0]])


@pytest.mark.parametrize("name", sorted(TYPES))
def test_16_bits_to_float32_is_torchs_for_every_value(name):
    bn_type, torch_type = TYPES[name]
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = convert(bits, bn_type, _lib.BN_FLOAT32, np.float32)
    want = torch.from_numpy(bits.view(np.int16)).view(torch_type).to(torch.float32).numpy()
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_float64_rounds_once():
    # just above a float16 tie: torch rounds to float32 first (the tie) and then to even; the
    # double rounds up
    d = np.array([1.0 + 2.0 ** -11 + 2.0 ** -40, 1.0 + 2.0 ** -8 + 2.0 ** -40])
    assert convert(d[:1], _lib.BN_FLOAT64, _lib.BN_FLOAT16, np.uint16)[0] == 0x3C01
    assert torch_bits(d[:1].astype(np.float32), torch.float16)[0] == 0x3C00
    assert convert(d[1:], _lib.BN_FLOAT64, _lib.BN_BFLOAT16, np.uint16)[0] == 0x3F81


def test_errors_leave_the_output_alone():
    f = np.ones(4, np.float32)
    out = np.zeros(4, np.uint16)
    lib = _lib.lib
    assert lib.bn_convert(out.ctypes.data, 9, f.ctypes.data, _lib.BN_FLOAT32, 4) == -6
    assert lib.bn_convert(out.ctypes.data, _lib.BN_FLOAT16, f.ctypes.data, _lib.BN_FLOAT32, -1) == -2
    assert lib.bn_convert(None, _lib.BN_FLOAT16, f.ctypes.data, _lib.BN_FLOAT32, 4) == -1
    assert lib.bn_convert(f.ctypes.data, _lib.BN_FLOAT16, f.ctypes.data, _lib.BN_FLOAT32, 4) == -4
    assert not out.any() and (f == 1).all()
    assert lib.bn_convert(None, _lib.BN_FLOAT16, None, _lib.BN_FLOAT32, 0) == 0
