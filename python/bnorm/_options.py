"""bnorm.Options: struct bn_options as a Python value, with the header's presets.

Every framework's batch norm is PyTorch's engine with other options: which way momentum points,
whether the running variance is biased, Caffe's sums, MXNet's fix_gamma, whether one value per
channel is refused; and frozen batch norm's choices (stored statistics, frozen running ones),
ghost batches (virtual_batch) and renorm's clipping. See include/bnorm.h, "CONVENTIONS".
"""

import dataclasses
import math

from . import _lib

MOMENTUM_OF_OLD = _lib.MOMENTUM_OF_OLD
BIASED_RUNNING_VAR = _lib.BIASED_RUNNING_VAR
RUNNING_SUMS = _lib.RUNNING_SUMS
FIX_GAMMA = _lib.FIX_GAMMA
ONE_VALUE_OK = _lib.ONE_VALUE_OK
STORED_STATS = _lib.STORED_STATS
FREEZE_RUNNING = _lib.FREEZE_RUNNING


@dataclasses.dataclass(frozen=True)
class Options:
    """The options of a training pass, field for field as struct bn_options (defaults: PyTorch's).

    momentum weighs the batch, or the old value with MOMENTUM_OF_OLD or RUNNING_SUMS; flags is
    an or of the flag constants; virtual_batch > 0 gives ghost batches of that many samples;
    renorm_momentum, rmin, rmax, dmax are batch renormalization's (forward_train_renorm).
    """
    eps: float = 1e-5
    momentum: float = 0.1
    cumulative: bool = False
    flags: int = 0
    virtual_batch: int = 0
    renorm_momentum: float = 0.1
    rmin: float = 0.0
    rmax: float = math.inf
    dmax: float = math.inf

    def replace(self, **changes):
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def c_struct(self):
        """The BnOptions the C functions take."""
        return _lib.make_options(self.eps, self.momentum, self.cumulative, self.flags,
                                 self.virtual_batch, self.renorm_momentum, self.rmin, self.rmax,
                                 self.dmax)


_OLD_BIASED = MOMENTUM_OF_OLD | BIASED_RUNNING_VAR | ONE_VALUE_OK

# The header's presets (BN_OPTIONS_PYTORCH ...), by framework.
PRESETS = {
    "pytorch": Options(),
    "onnx": Options(1e-5, 0.9, flags=_OLD_BIASED, renorm_momentum=0.9),
    "keras": Options(1e-3, 0.99, flags=_OLD_BIASED, renorm_momentum=0.99),
    "tensorflow": Options(1e-3, 1.0, flags=ONE_VALUE_OK, renorm_momentum=1.0),
    "caffe": Options(1e-5, 0.999, flags=RUNNING_SUMS | ONE_VALUE_OK, renorm_momentum=0.999),
    "mxnet": Options(1e-3, 0.9, flags=_OLD_BIASED | FIX_GAMMA, renorm_momentum=0.9),
    "flax": Options(1e-5, 0.99, flags=_OLD_BIASED, renorm_momentum=0.99),
}
