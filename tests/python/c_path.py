"""Which path computed a bnorm.torch output, and a switch between the two.

Where libtorch's headers are (make test installs libtorch-dev), `make` builds bnorm._torch_native
(python/bnorm/_torch_native.cpp), which takes the ordinary calls; what it declines, and every
call where it is not built, goes through ctypes and the Python autograd Function of
_functional.py. Both run the C library; these are their autograd nodes' names.
"""

from bnorm import _functional

NATIVE_NODE = "bnorm::BatchNormBackward"
CTYPES_NODE = "_BatchNormFunctionBackward"


def node_name(y):
    """The name of y's autograd node: a C++ node's name(), a Python Function's class name."""
    kind = type(y.grad_fn).__name__
    return y.grad_fn.name() if kind == "CppFunction" else kind


def computed_by_c(y):
    """Whether y's autograd node is one of the C library's (either path)."""
    return y.grad_fn is not None and node_name(y) in (NATIVE_NODE, CTYPES_NODE)


def use_ctypes_path(monkeypatch):
    """Every call of this test through ctypes (the native module left out)."""
    monkeypatch.setattr(_functional, "_native_batch_norm", None)
