"""bnorm.keras: Keras's BatchNormalization layer on numpy arrays, computed by bnorm's engine.

    import numpy as np, bnorm.keras
    layer = bnorm.keras.BatchNormalization()              # axis=-1: channels last, as Keras
    x = np.random.randn(8, 5, 5, 3).astype(np.float32)    # (N, H, W, C)
    y = layer(x, training=True)     # batch statistics; moving_mean, moving_variance updated
    y = layer(x)                    # inference: the moving statistics
    layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance   # numpy arrays of C

The layer has tf-keras's constructor arguments that change the arithmetic, Keras 3's included:
axis, momentum (the weight of the old value), epsilon, center, scale, and tf-keras's batch
renormalization (renorm, renorm_clipping, renorm_momentum) and ghost batches
(virtual_batch_size). Its state is Keras's, under Keras's names, created at the first call (in
training or not) from x.shape[axis] with Keras's initial values: gamma 1 (None with
scale=False), beta 0 (None with center=False), moving_mean 0, moving_variance 1, and with renorm
moving_stddev 1, renorm_mean 0, renorm_stddev 1. get_weights() / set_weights() take them in
Keras's order. Every call is one call of the C engine with the options of PRESETS["keras"]
(bnorm.forward_train, forward_train_renorm, forward_eval); the channel axis is moved to the
engine's position 1 as a view: axis=-1 is the engine's channels-last layout and a C-contiguous
input with any other axis is the engine's (N', C, S), so neither is copied (ghost batches with
an axis between the first and the last are, since they need the batch axis to stay the batch).

Training (layer(x, training=True)) normalizes with the batch's mean and biased variance and
updates moving_mean = momentum * moving_mean + (1 - momentum) * mean, moving_variance likewise
with the biased variance (Keras 3 and tf-keras's non-fused path: tf-keras's fused path, taken for
float32 4-D and 5-D inputs with the channel axis second or last and neither renorm nor ghost
batches, blends the unbiased variance instead). A batch of one value per channel is normalized to beta.
With renorm=True the output is ((x - mean) / stddev * r + d) * gamma + beta with
stddev = sqrt(var + epsilon), s = max(renorm_stddev, sqrt(epsilon)), r = clip(stddev / s, rmin,
rmax), d = clip((mean - renorm_mean) / s, -dmax, dmax) from the renorm statistics before the
step; then renorm_mean and renorm_stddev follow mean and stddev with renorm_momentum,
moving_mean and moving_stddev follow them with momentum, and moving_variance =
max(moving_stddev^2 - epsilon, 0). With virtual_batch_size V the batch is read as (V, N/V, ...):
ghost batch j holds samples j, j + N/V, ... and is normalized with its own statistics, and the
moving (and renorm) statistics follow the mean over the ghost batches of their means and
variances. Inference (training=False, the default) normalizes with moving_mean and
moving_variance, renorm or not.

Where this differs from tf-keras: momentum and renorm_momentum outside [0, 1] and a negative or
non-finite epsilon raise ValueError, as do a negative rmax or dmax, which tf-keras would apply as
a constant r or d of that sign (an rmin above rmax is tf-keras's r = rmax, a negative rmin no
bound); an empty batch leaves the state as it is (tf-keras fills it with the NaN moments of no
values, unless a distribution strategy allows empty batches); a failed call leaves the layer as
it was, unbuilt if it was; several axes (axis=[1, 2]) raise NotImplementedError; gamma and the
other arrays have C elements with ghost batches too (tf-keras shapes them to broadcast).

x is a floating numpy array (or what np.asarray makes one) of any rank >= 1, the batch on axis
0. The first call sets the layer's dtype: x's, float32 or float64 (float16 gives float32, the
dtype of Keras's default policy); later calls cast x to it, as Keras casts a floating input to
its layer's compute dtype, and the output has it.
"""

import math
import numbers

import numpy as np

from . import PRESETS, forward_eval, forward_train, forward_train_renorm

__all__ = ["BatchNormalization"]

_CLIPPING_KEYS = ["rmax", "rmin", "dmax"]  # tf-keras's list, in its order (for the message)


def _single_axis(axis):
    """The int axis of an axis argument: an int, or a list or tuple holding one."""
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise NotImplementedError(
                "bnorm.keras: BatchNormalization over several axes (axis=%r) is not supported; "
                "give one channel axis" % (axis,))
        axis = axis[0]
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError("Expected an int or a list/tuple of ints for the argument 'axis', but "
                        "received: %r" % (axis,))
    return int(axis)


def _unit_interval(name, value):
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError("bnorm.keras: %s must be in [0, 1], got %r" % (name, value))
    return value


def _clipping(clipping):
    """renorm_clipping as the engine's (rmin, rmax, dmax), with tf-keras's meaning.

    tf-keras applies r = min(max(r, rmin), rmax) and d = min(max(d, -dmax), dmax), each bound
    only when its key is present and not None. r >= 0, so a negative rmin clips nothing, and an
    rmin above rmax gives r = rmax: both are the engine's interval [min(max(rmin, 0), rmax),
    rmax]. A negative rmax or dmax (a constant r or d of that sign) has no such interval.
    """
    if clipping is None:
        clipping = {}
    if not hasattr(clipping, "keys") or not hasattr(clipping, "get"):
        raise TypeError("bnorm.keras: renorm_clipping must be a dict, got %r" % (clipping,))
    if set(clipping) - set(_CLIPPING_KEYS):
        raise ValueError("renorm_clipping %s contains keys not in %s" % (clipping, _CLIPPING_KEYS))
    bounds = {}
    for key, unset in (("rmin", 0.0), ("rmax", math.inf), ("dmax", math.inf)):
        value = clipping.get(key)
        if value is None:
            bounds[key] = unset
            continue
        real = isinstance(value, numbers.Real) or (
            isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iuf")
        if isinstance(value, bool) or not real:
            raise TypeError("bnorm.keras: renorm_clipping[%r] must be a real number, got %r"
                            % (key, value))
        value = float(value)
        if math.isnan(value):
            raise ValueError("bnorm.keras: renorm_clipping[%r] is NaN" % key)
        if key in ("rmax", "dmax") and value < 0:
            raise ValueError("bnorm.keras: renorm_clipping[%r] must be >= 0, got %r" % (key, value))
        bounds[key] = value
    rmax = bounds["rmax"]
    rmin = min(max(bounds["rmin"], 0.0), rmax)
    return rmin, rmax, bounds["dmax"]


def _compute_dtype(dtype):
    """The dtype a layer built by an input of this dtype computes in."""
    if dtype.kind != "f":
        raise TypeError("bnorm.keras: the input must be a floating array, got dtype %s" % dtype)
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _engine_view(x, a, keep_batch):
    """x as the engine's (N, C, ...) with the channel axis a at position 1, and the function that
    gives back an output of the view's shape in x's shape.

    The channel axis last is the engine's channels-last memory as it is. A C-contiguous x with
    any other channel axis is (prod(x.shape[:a]), C, prod(x.shape[a+1:])) as it is, unless
    keep_batch (ghost batches) asks for axis 0 to stay the engine's batch; other cases are a
    moved view, which the engine copies when its memory is neither of its layouts.
    """
    if x.ndim == 1:
        return x[np.newaxis], lambda y: y[0]
    last = a == x.ndim - 1
    if x.flags.c_contiguous and not (x.ndim >= 3 and last) and not (keep_batch and a != 1):
        shape = x.shape
        view = x.reshape(math.prod(shape[:a]), shape[a], math.prod(shape[a + 1:]))
        return view, lambda y: y.reshape(shape)
    return np.moveaxis(x, a, 1), lambda y: np.moveaxis(y, 1, a)


class BatchNormalization:
    """Keras's BatchNormalization layer (tf-keras's arguments) on numpy arrays; see the module
    docstring. layer(x, training=False) returns the output and, in training, updates the state
    (gamma, beta, moving_mean, moving_variance; with renorm moving_stddev, renorm_mean,
    renorm_stddev), numpy arrays of C elements created at the first call."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 renorm=False, renorm_clipping=None, renorm_momentum=0.99,
                 virtual_batch_size=None):
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.center = bool(center)
        self.scale = bool(scale)
        self.renorm = bool(renorm)
        # as tf-keras: without renorm, renorm_clipping is neither checked nor used
        self.renorm_clipping = ({} if renorm_clipping is None else renorm_clipping) if renorm \
            else renorm_clipping
        self.renorm_momentum = renorm_momentum
        self.virtual_batch_size = virtual_batch_size
        self.trainable = True  # False: every call is inference, as Keras does
        self.built = False
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None
        if self.renorm:
            self.moving_stddev = self.renorm_mean = self.renorm_stddev = None
        self._dtype = self._ndim = self._channels = None  # set by the first call
        _single_axis(axis)  # the arguments' errors now rather than at the first call
        self._options()

    # --------------------------------------------------------------------------------------------
    # Arguments

    def _options(self):
        """The engine's Options for the layer's arguments as they are now (they may be changed
        between calls, as a Keras layer's attributes)."""
        epsilon = float(self.epsilon)
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise ValueError("bnorm.keras: epsilon must be finite and >= 0, got %r" % epsilon)
        v = self.virtual_batch_size
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError("bnorm.keras: virtual_batch_size must be an int or None, got %r"
                                % (v,))
            if v <= 0:
                raise ValueError("virtual_batch_size must be a positive integer that divides the "
                                 "true batch size of the input tensor")
        changes = dict(eps=epsilon, momentum=_unit_interval("momentum", self.momentum),
                       virtual_batch=int(v or 0))
        if self.renorm:
            rmin, rmax, dmax = _clipping(self.renorm_clipping)
            changes.update(renorm_momentum=_unit_interval("renorm_momentum",
                                                          self.renorm_momentum),
                           rmin=rmin, rmax=rmax, dmax=dmax)
        return PRESETS["keras"].replace(**changes)

    def _channel_axis(self, ndim):
        """The channel axis for an input of ndim dimensions, in [0, ndim)."""
        axis = _single_axis(self.axis)
        a = axis + ndim if axis < 0 else axis
        if ndim < 1 or not 0 <= a < ndim:
            raise ValueError("Invalid axis: %s (the input has %d dimensions)" % (axis, ndim))
        if self.virtual_batch_size is not None and a == 0:
            raise ValueError("When using virtual_batch_size, the batch dimension must be 0 and "
                             "thus axis cannot include 0. Received axis=%s" % (axis,))
        return a

    # --------------------------------------------------------------------------------------------
    # State

    def _state_names(self):
        """The state's attribute names in Keras's weight order (trainable ones first)."""
        names = (["gamma"] if self.scale else []) + (["beta"] if self.center else [])
        names += ["moving_mean", "moving_variance"]
        if self.renorm:
            names += ["moving_stddev", "renorm_mean", "renorm_stddev"]
        return names

    def _new_state(self, c, dtype):
        """Keras's initial values for c channels."""
        ones, zeros = (lambda: np.ones(c, dtype)), (lambda: np.zeros(c, dtype))
        init = {"gamma": ones, "beta": zeros, "moving_mean": zeros, "moving_variance": ones,
                "moving_stddev": ones, "renorm_mean": zeros, "renorm_stddev": ones}
        return {name: init[name]() for name in self._state_names()}

    def build(self, input_shape, dtype=np.float32):
        """Creates the state for inputs of this shape (None sizes allowed but on the axis) with
        Keras's initial values, as the first call does; dtype float32 or float64."""
        input_shape = tuple(input_shape)
        a = self._channel_axis(len(input_shape))
        c = input_shape[a]
        if c is None:
            raise ValueError("Input has undefined `axis` dimension. Received input with shape %s."
                             " Axis value: %s" % (input_shape, self.axis))
        self._commit(self._new_state(int(c), _compute_dtype(np.dtype(dtype))), len(input_shape))

    def _commit(self, state, ndim):
        for name, value in state.items():
            setattr(self, name, value)
        self._dtype = state["moving_mean"].dtype
        self._ndim = ndim
        self._channels = state["moving_mean"].size
        self.built = True

    @property
    def weights(self):
        """The state arrays themselves, in Keras's order ([] before the layer is built)."""
        return [getattr(self, name) for name in self._state_names()] if self.built else []

    def get_weights(self):
        """Copies of the state arrays, in Keras's order: gamma, beta, moving_mean,
        moving_variance, then with renorm moving_stddev, renorm_mean, renorm_stddev (gamma and
        beta only when scale and center)."""
        return [np.array(w) for w in self.weights]

    def set_weights(self, weights):
        """Sets the state from arrays in get_weights()'s order (the layer must be built); each
        value is cast to the layer's dtype and written into the existing array."""
        weights = list(weights)
        names = self._state_names() if self.built else []
        if len(weights) != len(names):
            raise ValueError("You called `set_weights(weights)` on layer %s with a weight list of"
                             " length %d, but the layer was expecting %d weights."
                             % (type(self).__name__, len(weights), len(names)))
        values = []
        for name, value in zip(names, weights):
            target = getattr(self, name)
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError("Layer weight shape %s not compatible with provided weight shape"
                                 " %s (%s)" % (target.shape, value.shape, name))
            values.append(value)
        for name, value in zip(names, values):
            np.copyto(getattr(self, name), value, casting="unsafe")

    # --------------------------------------------------------------------------------------------
    # The call

    def __call__(self, x, training=False):
        """The layer's output for x (training=None is False); in training (and when trainable)
        the state follows the batch. A call that raises leaves the layer as it was."""
        x = np.asarray(x)
        options = self._options()
        training = bool(training) and self.trainable
        dtype = _compute_dtype(x.dtype)  # raises for a dtype that is not floating
        dtype = self._dtype if self.built else dtype
        a = self._channel_axis(x.ndim)
        c = x.shape[a]
        if self.built:
            if x.ndim != self._ndim:
                raise ValueError("Input 0 of layer %s is incompatible with the layer: expected "
                                 "ndim=%d, found ndim=%d. Full shape received: %s"
                                 % (type(self).__name__, self._ndim, x.ndim, x.shape))
            if c != self._channels:
                raise ValueError("Input 0 of layer %s is incompatible with the layer: expected "
                                 "axis %s of input shape to have value %d, but received input "
                                 "with shape %s" % (type(self).__name__, self.axis,
                                                    self._channels, x.shape))
        v = self.virtual_batch_size
        if v is not None and x.shape[0] % v != 0:
            raise ValueError("bnorm.keras: virtual_batch_size %d does not divide the batch size "
                             "%d (tf-keras's reshape to (virtual_batch_size, -1, ...) fails)"
                             % (v, x.shape[0]))
        if self.built:
            state = {name: getattr(self, name) for name in self._state_names()}
        else:
            state = self._new_state(c, dtype)
        x = x.astype(dtype, copy=False)
        y = self._run(x, a, state, options, training)
        if not self.built:
            self._commit(state, x.ndim)
        return y

    def _run(self, x, a, state, options, training):
        """The engine's call on x, channel axis a, with the state arrays (updated in place)."""
        if x.size == 0:
            return np.empty_like(x)
        view, back = _engine_view(x, a, keep_batch=training and options.virtual_batch > 0)
        g, b = state.get("gamma"), state.get("beta")
        if not training:
            y = forward_eval(view, state["moving_mean"], state["moving_variance"], g, b,
                             options.eps)
        elif self.renorm:
            y = forward_train_renorm(view, state["renorm_mean"], state["renorm_stddev"], g, b,
                                     state["moving_mean"], state["moving_variance"],
                                     state["moving_stddev"], options=options)[0]
        else:
            y = forward_train(view, g, b, state["moving_mean"], state["moving_variance"],
                              options=options)[0]
        return back(y)

    def __repr__(self):
        args = "axis=%r, momentum=%r, epsilon=%r" % (self.axis, self.momentum, self.epsilon)
        if not self.center:
            args += ", center=False"
        if not self.scale:
            args += ", scale=False"
        if self.renorm:
            args += ", renorm=True, renorm_clipping=%r, renorm_momentum=%r" % (
                self.renorm_clipping, self.renorm_momentum)
        if self.virtual_batch_size is not None:
            args += ", virtual_batch_size=%r" % (self.virtual_batch_size,)
        return "BatchNormalization(%s)" % args
