"""bnorm.fold_conv_bn and bnorm.fold_linear_bn against torch: torch.nn.utils.fusion's
fuse_conv_bn_weights / fuse_linear_bn_weights on the same arrays (convolutions 1d-3d, grouped
or not, transposed with groups=1, with and without a bias and affine parameters), and the
unfused torch model for grouped transposed convolutions (where torch 1.13's reshape is wrong),
in float64 and float32; the errors."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

import bnorm

TOL = {torch.float64: 1e-12, torch.float32: 2e-6}


def close(a, ref, tol):
    ref = np.asarray(ref, np.float64)
    return np.all(np.abs(np.asarray(a, np.float64) - ref) <= tol * np.maximum(1, np.abs(ref)))


def bn_with_statistics(c, dtype, affine=True, seed=0):
    """An eval-mode BatchNorm whose running statistics and parameters are not the defaults."""
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm1d(c, affine=affine, dtype=dtype).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=dtype) * 3)
        bn.running_var.copy_(torch.rand(c, generator=gen, dtype=dtype) * 4 + 0.1)
        if affine:
            bn.weight.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
    return bn


def numpy_args(bn):
    w = None if bn.weight is None else bn.weight.detach().numpy()
    b = None if bn.bias is None else bn.bias.detach().numpy()
    return bn.running_mean.numpy(), bn.running_var.numpy(), bn.eps, w, b


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim,groups,transpose", [(1, 1, False), (2, 1, False), (3, 1, False),
                                                  (2, 2, False), (2, 4, False), (1, 1, True),
                                                  (2, 1, True), (3, 1, True)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_fold_conv_bn_equals_torch(dtype, dim, groups, transpose, bias, affine):
    conv_cls = getattr(nn, "Conv%s%dd" % ("Transpose" if transpose else "", dim))
    conv = conv_cls(4, 8, 3, groups=groups, bias=bias, dtype=dtype)
    bn = bn_with_statistics(8, dtype, affine)
    rm, rv, eps, bw, bb = numpy_args(bn)
    conv_b = None if conv.bias is None else conv.bias.detach().numpy()
    w, b = bnorm.fold_conv_bn(conv.weight.detach().numpy(), conv_b, rm, rv, eps, bw, bb,
                              transpose=transpose)
    ref_w, ref_b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                        bn.running_var, bn.eps, bn.weight, bn.bias, transpose)
    assert w.dtype == conv.weight.detach().numpy().dtype and w.shape == tuple(ref_w.shape)
    assert close(w, ref_w.detach(), TOL[dtype]) and close(b, ref_b.detach(), TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_transposed_conv_equals_the_unfused_model(dtype, groups):
    torch.manual_seed(groups)
    conv = nn.ConvTranspose2d(4, 8, 3, groups=groups, dtype=dtype)
    bn = bn_with_statistics(8, dtype)
    x = torch.randn(2, 4, 5, 5, dtype=dtype)
    with torch.no_grad():
        expected = nn.functional.batch_norm(conv(x), bn.running_mean, bn.running_var,
                                            bn.weight, bn.bias, False, 0.0, bn.eps)
        w, b = bnorm.fold_conv_bn(conv.weight.numpy(), conv.bias.numpy(), *numpy_args(bn),
                                  transpose=True, groups=groups)
        folded = nn.functional.conv_transpose2d(x, torch.from_numpy(w), torch.from_numpy(b),
                                                groups=groups)
    assert close(folded, expected, 1e-12 if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_fold_linear_bn_equals_torch(dtype, bias):
    linear = nn.Linear(5, 6, bias=bias, dtype=dtype)
    bn = bn_with_statistics(6, dtype)
    linear_b = None if linear.bias is None else linear.bias.detach().numpy()
    w, b = bnorm.fold_linear_bn(linear.weight.detach().numpy(), linear_b, *numpy_args(bn))
    if linear.bias is None:  # torch 1.13's fuse_linear_bn_weights needs a bias
        ref_w, ref_b = fuse_linear_bn_weights(linear.weight, torch.zeros(6, dtype=dtype),
                                              bn.running_mean, bn.running_var, bn.eps,
                                              bn.weight, bn.bias)
    else:
        ref_w, ref_b = fuse_linear_bn_weights(linear.weight, linear.bias, bn.running_mean,
                                              bn.running_var, bn.eps, bn.weight, bn.bias)
    assert close(w, ref_w.detach(), TOL[dtype]) and close(b, ref_b.detach(), TOL[dtype])


def test_errors():
    w = np.ones((4, 2, 3))
    rm, rv = np.zeros(4), np.ones(4)
    with pytest.raises(TypeError, match="float32 or float64"):
        bnorm.fold_conv_bn(w.astype(np.int64), None, rm, rv, 1e-5, None, None)
    with pytest.raises(TypeError, match="dtype"):
        bnorm.fold_conv_bn(w, None, rm.astype(np.float32), rv, 1e-5, None, None)
    with pytest.raises(ValueError, match="4 values"):
        bnorm.fold_conv_bn(w, None, np.zeros(3), rv, 1e-5, None, None)
    with pytest.raises(ValueError, match="groups"):
        bnorm.fold_conv_bn(w, None, rm, rv, 1e-5, None, None, groups=2)
    with pytest.raises(ValueError, match="groups"):
        bnorm.fold_conv_bn(w, None, np.zeros(6), np.ones(6), 1e-5, None, None, transpose=True,
                           groups=3)
    with pytest.raises(bnorm.BnormError, match="BN_ERR_ARGUMENT"):
        bnorm.fold_conv_bn(w, None, rm, rv, -1.0, None, None)
    with pytest.raises(ValueError, match="linear"):
        bnorm.fold_linear_bn(w, None, rm, rv, 1e-5, None, None)
    with pytest.raises(TypeError, match="required"):
        bnorm.fold_conv_bn(w, None, None, rv, 1e-5, None, None)
