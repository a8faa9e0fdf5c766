"""torch.ao.quantization.fuse_modules for bnorm's modules: the same fusions as for torch.nn's.

fuse_modules looks the exact types of the modules to fuse up in
torch.ao.quantization.fuser_method_mappings.DEFAULT_OP_LIST_TO_FUSER_METHOD. register() adds,
for every pattern there that holds a torch.nn.BatchNorm1d/2d/3d, the same pattern with bnorm's
class, fused by torch's own method: in eval, (Conv, BN), (Conv, BN, ReLU), (Linear, BN) and
(ConvTranspose, BN) fold the statistics into the weights (torch.nn.utils.fuse_conv_bn_eval,
fuse_linear_bn_eval), after which no batch norm runs at all. The one exception is (BN, ReLU):
torch wraps it in nni.BNReLU2d/3d, which accept only torch's BatchNorm, so it becomes an
nn.Sequential of the two (the same computation; quantization's convert does not know it).
QAT fusion (training mode) is not offered for bnorm's modules.
"""

import torch as _torch
from torch.ao.quantization import fuser_method_mappings as _mappings

__all__ = ["register"]


def _bn_relu(is_qat, bn, relu):
    return _torch.nn.Sequential(bn, relu)


def register(ours):
    """Add the fusion patterns of ours ({torch.nn.BatchNormXd: bnorm's class}) to torch's table,
    once (a second call finds them there)."""
    table = _mappings.DEFAULT_OP_LIST_TO_FUSER_METHOD
    for pattern, method in list(table.items()):
        if not any(t in ours for t in pattern):
            continue
        if pattern[0] in ours:  # (BN, ReLU)
            method = _bn_relu
        table.setdefault(tuple(ours.get(t, t) for t in pattern), method)
