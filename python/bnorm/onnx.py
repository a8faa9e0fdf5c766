"""bnorm.onnx: ONNX's BatchNormalization (opset 15) on numpy arrays, through bnorm's C engine.

    import bnorm.onnx
    y = bnorm.onnx.batch_normalization(x, scale, b, mean, var)                  # inference
    y, running_mean, running_var = bnorm.onnx.batch_normalization(
        x, scale, b, mean, var, epsilon=1e-5, momentum=0.9, training_mode=True)  # training

The operator's inputs, attributes and outputs, by their ONNX names. X is (N, C, D1, ...) of
rank >= 2; scale, B, input_mean and input_var are 1-d arrays of C elements.

- Inference (training_mode false): Y = scale * (X - input_mean) / sqrt(input_var + epsilon) + B,
  bnorm.forward_eval.
- Training: Y is X normalized with its batch statistics over N and D1, ...; running_mean =
  input_mean * momentum + batch_mean * (1 - momentum), and running_var likewise with the biased
  batch variance (the one Y is normalized with): bnorm.forward_train with the ONNX preset,
  PRESETS["onnx"] (momentum weighs the old value, biased running variance, and a batch of one
  value per channel allowed, its Y being B). Returns (Y, running_mean, running_var).

The function is functional, as ONNX is: no argument is modified, every result is a new array.
epsilon and momentum are FLOAT attributes in ONNX, so a model holds them as float32: they are
rounded to float32 here too (epsilon=1e-5 is 9.99999975e-06), which gives the results a runtime
gives for the model.

Types, as the operator's T, T1 and T2: X is float16, float32 or float64 (T); scale and B share
one of these dtypes (T1), input_mean and input_var one (T2), each independent of the others.
The arithmetic runs in X's dtype, float16 through float32 (the statistics in double, as for every
bnorm pass): the per-channel arrays are converted to it, Y is returned in X's dtype, rounded
once from float32 for float16, and running_mean and running_var in input_mean's dtype. bfloat16
(numpy has none), integers and other dtypes are a TypeError.

Errors: TypeError for the dtypes above (or scale and B, input_mean and input_var, of different
dtypes); ValueError for X of rank < 2 or without channels (C = 0), a per-channel array that is not
1-d of C elements, epsilon negative or not finite, and in training momentum outside [0, 1] or NaN
(bnorm refuses them, ONNX's reference computes with them). momentum is not used, so not checked,
in inference.

An empty batch (N = 0, or a spatial size 0) gives an empty Y; in training its running statistics
are input_mean and input_var unchanged, as the engine leaves them (a batch without statistics
changes nothing), where ONNX Runtime and ONNX's numpy reference give NaN (the mean of no values,
blended in).
"""

import numpy as np

from . import PRESETS, BnormError, forward_eval, forward_train

__all__ = ["batch_normalization"]

_WHERE = "bnorm.onnx.batch_normalization"

# ONNX's float types that numpy has, and the dtype bnorm computes each in.
_COMPUTE = {
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
}


def _float_array(name, a):
    """a as an ndarray of one of ONNX's float types, in native byte order."""
    a = np.asarray(a)
    native = a.dtype.newbyteorder("=") if a.dtype.kind == "f" else a.dtype
    if native not in _COMPUTE:
        raise TypeError("%s: %s must be float16, float32 or float64, got %s"
                        % (_WHERE, name, a.dtype))
    return a.astype(native, copy=False)


def _channel_pair(names, arrays, c, type_name):
    """Two per-channel inputs that share the type constraint type_name (T1 or T2)."""
    pair = [_float_array(n, a) for n, a in zip(names, arrays)]
    for n, a in zip(names, pair):
        if a.shape != (c,):
            raise ValueError("%s: %s must be 1-d with C = %d elements (X's dimension 1), got "
                             "shape %s" % (_WHERE, n, c, a.shape))
    if pair[0].dtype != pair[1].dtype:
        raise TypeError("%s: %s and %s must have the same dtype (ONNX's %s), got %s and %s"
                        % (_WHERE, names[0], names[1], type_name, pair[0].dtype, pair[1].dtype))
    return pair


def _attribute(value):
    """An ONNX FLOAT attribute as a model holds it: value rounded to float32."""
    with np.errstate(over="ignore"):  # beyond float32's range: infinity, which C refuses
        return float(np.float32(value))


def _argument_error(epsilon, momentum, training):
    """The C library's BN_ERR_ARGUMENT as a ValueError naming ONNX's attributes."""
    if training:
        what = ("epsilon must be finite and >= 0 and momentum finite and in [0, 1], got "
                "epsilon=%r, momentum=%r" % (epsilon, momentum))
    else:
        what = "epsilon must be finite and >= 0, got epsilon=%r" % (epsilon,)
    return ValueError("%s: %s" % (_WHERE, what))


def batch_normalization(X, scale, B, input_mean, input_var, epsilon=1e-5, momentum=0.9,
                        training_mode=False):
    """ONNX BatchNormalization-15: returns Y, or (Y, running_mean, running_var) when
    training_mode is true. See the module's documentation for the formulas, types and errors."""
    x = _float_array("X", X)
    if x.ndim < 2:
        raise ValueError("%s: X must have rank >= 2, (N, C, D1, ...), got shape %s"
                         % (_WHERE, x.shape))
    c = x.shape[1]
    if c == 0:
        raise ValueError("%s: X has no channels (C = 0), shape %s" % (_WHERE, x.shape))
    scale, bias = _channel_pair(("scale", "B"), (scale, B), c, "T1")
    mean, var = _channel_pair(("input_mean", "input_var"), (input_mean, input_var), c, "T2")
    training = bool(training_mode)
    eps, mom = _attribute(epsilon), _attribute(momentum)

    compute = _COMPUTE[x.dtype]
    xc = x.astype(compute, copy=False)  # the engine only reads it
    weight, bias = scale.astype(compute, copy=False), bias.astype(compute, copy=False)
    try:
        if not training:
            y = forward_eval(xc, mean.astype(compute, copy=False),
                             var.astype(compute, copy=False), weight, bias, eps)
            return y.astype(x.dtype, copy=False)
        # New arrays (copies even when no conversion is needed) that the engine updates in place.
        running_mean, running_var = np.array(mean, compute), np.array(var, compute)
        options = PRESETS["onnx"].replace(eps=eps, momentum=mom)
        y, _, _ = forward_train(xc, weight, bias, running_mean, running_var, options=options)
    except BnormError as err:
        if err.name == "BN_ERR_ARGUMENT":
            raise _argument_error(epsilon, momentum, training) from err
        raise
    return (y.astype(x.dtype, copy=False), running_mean.astype(mean.dtype, copy=False),
            running_var.astype(mean.dtype, copy=False))
