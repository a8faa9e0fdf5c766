"""The stages of a split batch through ctypes (python/bnorm/_lib.py): moments of pieces merged,
then each piece normalized with them, equal torch's training batch norm of the whole batch in
float64; one piece gives the bits of bn_forward_train."""
import ctypes

import numpy as np
import torch

from bnorm import _lib


def moments(x):
    c = x.shape[1]
    m = (_lib.BnMoments * c)()
    desc = _lib.make_desc(x.shape, _lib.BN_FLOAT64, _lib.BN_CHANNELS_FIRST)
    _lib.check(_lib.lib.bn_compute_moments(ctypes.addressof(m), x.ctypes.data, desc))
    return m


def test_pieces_merged_then_normalized_equal_the_whole_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((11, 3, 5)) * 4 + 1e4
    cuts = [0, 0, 4, 5, 11]
    c = x.shape[1]
    acc = (_lib.BnMoments * c)()
    for a, b in zip(cuts, cuts[1:]):
        part = moments(np.ascontiguousarray(x[a:b]))
        _lib.check(_lib.lib.bn_merge_moments(ctypes.addressof(acc), ctypes.addressof(part), c))
    assert [m.count for m in acc] == [55] * 3
    np.testing.assert_allclose([m.mean for m in acc], x.mean(axis=(0, 2)), rtol=1e-15)
    np.testing.assert_allclose([m.m2 / 55 for m in acc], x.var(axis=(0, 2)), rtol=1e-11)
    rm, rv = np.zeros(3), np.ones(3)
    y = np.empty_like(x)
    opt = _lib.make_options()
    for a, b in zip(cuts, cuts[1:]):
        piece = np.ascontiguousarray(x[a:b])
        out = np.empty_like(piece)
        prm, prv = np.zeros(3), np.ones(3)
        desc = _lib.make_desc(piece.shape, _lib.BN_FLOAT64, _lib.BN_CHANNELS_FIRST)
        _lib.check(_lib.lib.bn_forward_train_stats(
            out.ctypes.data, None, None, prm.ctypes.data, prv.ctypes.data, None,
            piece.ctypes.data, None, None, ctypes.addressof(acc), desc, opt))
        y[a:b] = out
        rm, rv = prm, prv  # every piece computes the same running statistics
    tm, tv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    want = torch.nn.functional.batch_norm(torch.from_numpy(x), tm, tv, training=True)
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rm, tm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, tv.numpy(), rtol=1e-9)


def test_one_piece_gives_the_fused_bits():
    x = np.random.default_rng(1).standard_normal((6, 4, 7)).astype(np.float32).astype(np.float64)
    desc = _lib.make_desc(x.shape, _lib.BN_FLOAT64, _lib.BN_CHANNELS_FIRST)
    opt = _lib.make_options()
    y1, y2 = np.empty_like(x), np.empty_like(x)
    _lib.check(_lib.lib.bn_forward_train(y1.ctypes.data, None, None, None, None, None,
                                         x.ctypes.data, None, None, desc, opt))
    m = moments(x)
    _lib.check(_lib.lib.bn_forward_train_stats(y2.ctypes.data, None, None, None, None, None,
                                               x.ctypes.data, None, None, ctypes.addressof(m),
                                               desc, opt))
    assert y1.tobytes() == y2.tobytes()
    # a count of 1 in the stats is BN_ERR_COUNT, and nothing is written
    one = (_lib.BnMoments * 4)(*[_lib.BnMoments(1, 0.0, 0.0)] * 4)
    d1 = _lib.make_desc((1, 4, 1), _lib.BN_FLOAT64, _lib.BN_CHANNELS_FIRST)
    y = np.full((1, 4, 1), 7.0)
    status = _lib.lib.bn_forward_train_stats(y.ctypes.data, None, None, None, None, None,
                                             x.ctypes.data, None, None, ctypes.addressof(one), d1,
                                             opt)
    assert _lib.STATUS_NAMES[status] == "BN_ERR_COUNT" and (y == 7.0).all()
