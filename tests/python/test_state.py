"""libbnorm_state (include/bnorm_state.h) against live PyTorch: a trained model's state_dict,
saved as safetensors (by tests/state/torch_safetensors.py: torch 1.13 has no safetensors
package), read layer by layer by prefix through ctypes and run by libbnorm's bn_forward_eval,
equals torch's eval output of each layer; the files the library writes parse as the format says,
hold the bytes of torch's state_dict and load into torch.nn.BatchNorm with load_state_dict; the
header's example program runs on such a checkpoint; the C suite passes; the shared library
exports bnorm_state.h only; make install installs it with a pkg-config file; a build without
cJSON leaves it out.

Run: BNORM_LIBRARY=$PWD/build/libbnorm.so /usr/bin/python3 -m pytest -q tests/python/test_state.py
(the libraries are looked for in $BNORM_BUILD, else beside $BNORM_LIBRARY, else in build/)."""
import collections
import copy
import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[2]
if os.environ.get("BNORM_BUILD"):
    BUILD = Path(os.environ["BNORM_BUILD"])
elif os.environ.get("BNORM_LIBRARY"):
    BUILD = Path(os.environ["BNORM_LIBRARY"]).resolve().parent
else:
    BUILD = REPO / "build"
sys.path.insert(0, str(REPO / "tests" / "state"))
import torch_safetensors as safetensors  # noqa: E402

STATE_SO = BUILD / "libbnorm_state.so"
if not STATE_SO.exists():
    pytest.fail(f"{STATE_SO} is not built: make builds it where cJSON is found "
                "(apt-get install libcjson-dev)", pytrace=False)

BN_OK, BN_ERR_NULL_POINTER, BN_ERR_IO, BN_ERR_FORMAT, BN_ERR_UNSUPPORTED = 0, -1, -7, -8, -6
BN_ERR_ARGUMENT = -4
BN_FLOAT32, BN_FLOAT64 = 0, 1
NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class BnState(ctypes.Structure):
    """struct bn_state, field for field."""
    _fields_ = [("c", ctypes.c_int64), ("dtype", ctypes.c_int),
                ("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("running_mean", ctypes.c_void_p), ("running_var", ctypes.c_void_p),
                ("num_batches_tracked", ctypes.c_int64),
                ("has_num_batches_tracked", ctypes.c_int)]


class BnDesc(ctypes.Structure):
    """struct bn_desc of bnorm.h (test_exports.py checks bnorm._lib's copy against the
    header's size)."""
    _fields_ = [("n", ctypes.c_int64), ("c", ctypes.c_int64), ("s", ctypes.c_int64),
                ("dtype", ctypes.c_int), ("layout", ctypes.c_int), ("params", ctypes.c_int)]


_vp, _cp, _sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
state_lib = ctypes.CDLL(str(STATE_SO))
for name, args in {
        "bn_state_open": [ctypes.POINTER(_vp), _cp, _cp, _sz],
        "bn_state_get": [ctypes.POINTER(BnState), _vp, _cp, _cp, _sz],
        "bn_state_read": [ctypes.POINTER(BnState), _cp, _cp, _cp, _sz],
        "bn_state_write_layers": [_cp, ctypes.c_int, ctypes.POINTER(_cp),
                                  ctypes.POINTER(BnState), _cp, _sz],
        "bn_state_write": [_cp, _cp, ctypes.POINTER(BnState), _cp, _sz]}.items():
    getattr(state_lib, name).argtypes = args
    getattr(state_lib, name).restype = ctypes.c_int
state_lib.bn_state_close.argtypes = [_vp]
state_lib.bn_state_close.restype = None
state_lib.bn_state_free.argtypes = [ctypes.POINTER(BnState)]
state_lib.bn_state_free.restype = None

core = ctypes.CDLL(os.environ.get("BNORM_LIBRARY", str(BUILD / "libbnorm.so")))
core.bn_desc_from_dims.argtypes = [ctypes.POINTER(BnDesc), ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_int]
core.bn_forward_eval.argtypes = [_vp] * 6 + [ctypes.POINTER(BnDesc), ctypes.c_double]
for f in (core.bn_desc_from_dims, core.bn_forward_eval):
    f.restype = ctypes.c_int


# ---------------------------------------------------------------------------------------------
# The library through ctypes.

class StateFile:
    """bn_state_open ... bn_state_close."""

    def __init__(self, path):
        self.handle = _vp()
        err = ctypes.create_string_buffer(512)
        st = state_lib.bn_state_open(ctypes.byref(self.handle), str(path).encode(), err, 512)
        assert st == BN_OK, err.value.decode()

    def get(self, prefix):
        """(status, message, BnState) of bn_state_get; the caller frees a state it got."""
        out = BnState()
        err = ctypes.create_string_buffer(512)
        st = state_lib.bn_state_get(ctypes.byref(out), self.handle,
                                    None if prefix is None else prefix.encode(), err, 512)
        return st, err.value.decode(), out

    def close(self):
        state_lib.bn_state_close(self.handle)


def arrays_of(s):
    """{name: numpy copy} of a BnState's arrays that are present, and its count."""
    dtype = np.float64 if s.dtype == BN_FLOAT64 else np.float32
    out = {}
    for name in NAMES[:4]:
        address = getattr(s, name)
        if address:
            out[name] = np.ctypeslib.as_array(
                ctypes.cast(address, ctypes.POINTER(np.ctypeslib.as_ctypes_type(dtype))),
                shape=(s.c,)).copy()
    if s.has_num_batches_tracked:
        out["num_batches_tracked"] = s.num_batches_tracked
    return out


def forward_eval(s, x, eps):
    """bn_forward_eval of libbnorm on the numpy array x (N, C, ...) with the C state's own
    arrays."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    dims = (ctypes.c_int64 * x.ndim)(*x.shape)
    desc = BnDesc()
    dtype = BN_FLOAT64 if x.dtype == np.float64 else BN_FLOAT32
    assert core.bn_desc_from_dims(ctypes.byref(desc), x.ndim, dims, dtype, 0) == BN_OK
    st = core.bn_forward_eval(y.ctypes.data, x.ctypes.data, s.running_mean, s.running_var,
                              s.weight, s.bias, ctypes.byref(desc), eps)
    assert st == BN_OK
    return y


def to_states(layers):
    """[(prefix, module)] of torch BatchNorm layers as (prefixes, BnState array, the numpy
    arrays kept alive for the call)."""
    states = (BnState * len(layers))()
    keep = []
    for k, (prefix, m) in enumerate(layers):
        dtype = m.weight.dtype if m.weight is not None else m.running_mean.dtype
        s = states[k]
        s.dtype = BN_FLOAT64 if dtype == torch.float64 else BN_FLOAT32
        for name in NAMES[:4]:
            t = getattr(m, name)
            if t is not None:
                a = t.detach().numpy().copy()
                keep.append(a)
                s.c = a.size
                setattr(s, name, a.ctypes.data)
        if m.num_batches_tracked is not None:
            s.num_batches_tracked = int(m.num_batches_tracked)
            s.has_num_batches_tracked = 1
    prefixes = (_cp * len(layers))(*[None if p is None else p.encode() for p, _ in layers])
    return prefixes, states, keep


def write_layers(path, layers):
    prefixes, states, keep = to_states(layers)
    err = ctypes.create_string_buffer(512)
    st = state_lib.bn_state_write_layers(str(path).encode(), len(layers), prefixes, states, err,
                                         512)
    del keep
    return st, err.value.decode()


# ---------------------------------------------------------------------------------------------
# A model with batch norm layers of every kind, trained a few steps.

class Block(nn.Module):
    def __init__(self, c_in, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c, momentum=None)
        self.conv2 = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c, affine=False)
        self.bn10 = nn.BatchNorm2d(c, track_running_stats=False)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn10(self.bn2(self.conv2(x))))


def make_model():
    return nn.Sequential(collections.OrderedDict(
        conv=nn.Conv2d(3, 5, 3), bn=nn.BatchNorm2d(5, eps=1e-3), relu=nn.ReLU(),
        layer1=nn.Sequential(Block(5, 7), Block(7, 7)),
        pool=nn.AdaptiveAvgPool2d(2), flat=nn.Flatten(2),
        bn1d=nn.BatchNorm1d(7),  # (N, C, L) input
        flat2=nn.Flatten(1), fc=nn.Linear(28, 6), head=nn.BatchNorm1d(6)))  # (N, C) input


BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def trained_model(dtype):
    torch.manual_seed(0)
    model = make_model().to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    model.train()
    for step in range(6):
        x = (torch.randn(8, 3, 9, 9) * (1 + step) + 2).to(dtype)
        loss = (model(x) - 1).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def bn_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BN_TYPES)]


def checkpoint(model, path):
    """The model's state_dict as safetensors, with tensors of other dtypes beside it (a
    mixed-precision copy, masks, counters) for the reader to step over."""
    tensors = dict(model.state_dict())
    tensors.update({"ema.conv.weight": model.conv.weight.detach().to(torch.bfloat16),
                    "ema.fc.weight": model.fc.weight.detach().to(torch.float16),
                    "masks.keep": torch.rand(9) > 0.5, "optimizer.step": torch.tensor(6),
                    "quant.scale": torch.arange(4, dtype=torch.int32),
                    "quant.zero": torch.arange(4, dtype=torch.uint8)})
    for key, t in model.bn.state_dict().items():  # a float16 copy of a layer
        tensors["half.bn." + key] = t.half() if t.is_floating_point() else t
    path.write_bytes(safetensors.dumps(tensors, {"format": "pt"}))
    return tensors


def layer_inputs(model, x):
    """{layer name: (its input, its output)} in the eval forward pass of model on x."""
    seen = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0].detach(), out.detach())))
        for n, m in bn_layers(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


# ---------------------------------------------------------------------------------------------
# Reading torch's checkpoints.

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_checkpoint_layers_read_by_prefix_match_torch_eval(tmp_path, dtype):
    model = trained_model(dtype)
    path = tmp_path / "model.safetensors"
    state = checkpoint(model, path)
    torch.manual_seed(1)
    seen = layer_inputs(model, (torch.randn(4, 3, 9, 9) * 3 + 2).to(dtype))
    f = StateFile(path)
    try:
        for name, m in bn_layers(model):
            st, msg, s = f.get(name + ".")
            assert st == BN_OK, msg
            try:
                got = arrays_of(s)
                want = {n: state[f"{name}.{n}"] for n in NAMES if f"{name}.{n}" in state}
                assert sorted(got) == sorted(want), name
                assert s.c == m.num_features
                assert s.dtype == (BN_FLOAT64 if dtype == torch.float64 else BN_FLOAT32)
                for n, t in want.items():  # the very values of torch's state_dict
                    if n == "num_batches_tracked":
                        assert got[n] == int(t) == 6
                    else:
                        assert got[n].tobytes() == t.numpy().tobytes(), (name, n)
                if m.running_mean is None:  # track_running_stats=False: no eval with them
                    continue
                x, y_torch = seen[name]
                y = forward_eval(s, x.numpy(), m.eps)
                with torch.no_grad():  # the same layer in float64 on the same input
                    y64 = copy.deepcopy(m).double()(x.double()).numpy()
                scale = np.maximum(1.0, np.abs(y64))
                tol = 1e-13 if dtype == torch.float64 else 1e-6
                assert np.max(np.abs(y - y64) / scale) <= tol, name
                tol_torch = 1e-13 if dtype == torch.float64 else 4e-6  # torch's is x * a + b
                assert np.max(np.abs(y - y_torch.numpy()) / scale) <= tol_torch, name
            finally:
                state_lib.bn_state_free(ctypes.byref(s))
    finally:
        f.close()


def test_prefixes_select_one_layer_among_the_others(tmp_path):
    model = trained_model(torch.float32)
    path = tmp_path / "model.safetensors"
    checkpoint(model, path)
    f = StateFile(path)
    try:
        # "layer1.0.bn1" never finds layer1.0.bn10; with or without its '.'
        for prefix in ("layer1.0.bn1", "layer1.0.bn1."):
            st, msg, s = f.get(prefix)
            assert st == BN_OK, msg
            assert "running_mean" in arrays_of(s)
            assert arrays_of(s)["weight"].tobytes() == model.layer1[0].bn1.weight.detach(
            ).numpy().tobytes()
            state_lib.bn_state_free(ctypes.byref(s))
        st, msg, s = f.get("layer1.0.bn10")
        assert st == BN_OK and sorted(arrays_of(s)) == ["bias", "weight"], msg
        state_lib.bn_state_free(ctypes.byref(s))
        for prefix, needle in (("layer1.0.bn", "no batch norm state under the prefix"),
                               ("layer1.2.bn1.", "no batch norm state"),
                               ("layer1.0.conv1", '"layer1.0.conv1.weight" without'),
                               ("fc", '"fc.weight": shape (6, 28), not (C)'),
                               ("ema.fc", '"ema.fc.weight" without "ema.fc.bias"'),
                               ("half.bn", '"half.bn.weight": dtype F16 is not supported'),
                               (None, "no batch norm state under the prefix \"\"")):
            st, msg, s = f.get(prefix)
            assert st in (BN_ERR_FORMAT, BN_ERR_UNSUPPORTED) and needle in msg, (prefix, msg)
            assert (s.c, s.weight, s.running_mean) == (0, None, None)
    finally:
        f.close()


def test_read_errors_name_the_problem(tmp_path):
    err = ctypes.create_string_buffer(512)
    out = BnState()
    st = state_lib.bn_state_read(ctypes.byref(out), str(tmp_path / "none").encode(), b"bn.", err,
                                 512)
    assert st == BN_ERR_IO and "No such file" in err.value.decode()
    (tmp_path / "x.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"{}")
    st = state_lib.bn_state_read(ctypes.byref(out), str(tmp_path / "x.safetensors").encode(),
                                 b"bn.", err, 512)
    assert st == BN_ERR_FORMAT and "not a safetensors file" in err.value.decode()
    # a torch BatchNorm2d's own state_dict, no prefix; one tensor missing
    m = nn.BatchNorm2d(3)
    tensors = dict(m.state_dict())
    del tensors["running_var"]
    (tmp_path / "y.safetensors").write_bytes(safetensors.dumps(tensors))
    st = state_lib.bn_state_read(ctypes.byref(out), str(tmp_path / "y.safetensors").encode(),
                                 None, err, 512)
    assert st == BN_ERR_FORMAT and err.value.decode() == '"running_mean" without "running_var"'


# ---------------------------------------------------------------------------------------------
# Writing what torch loads.

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_written_layers_load_into_torch(tmp_path, dtype):
    model = trained_model(dtype)
    layers = bn_layers(model)
    path = tmp_path / "bn.safetensors"
    st, msg = write_layers(path, layers)
    assert st == BN_OK, msg
    blob = path.read_bytes()
    assert int.from_bytes(blob[:8], "little") % 8 == 0  # the data starts 8-byte aligned
    tensors, metadata, header = safetensors.loads(blob)
    assert metadata == {"format": "pt"}
    state = model.state_dict()
    bn_keys = [k for k in state if k.rsplit(".", 1)[0] in dict(layers)]
    assert list(tensors) == bn_keys  # every key, in state_dict order, nothing else
    for key in bn_keys:
        assert tensors[key].dtype == state[key].dtype, key
        assert tensors[key].shape == state[key].shape, key  # num_batches_tracked: shape ()
        assert safetensors.raw_bytes(tensors[key]) == safetensors.raw_bytes(state[key]), key
    assert header["layer1.0.bn1.num_batches_tracked"]["shape"] == []
    # each layer into a fresh module of its kind, strictly; the same eval output, bit for bit
    torch.manual_seed(2)
    seen = layer_inputs(model, (torch.randn(3, 3, 9, 9) + 1).to(dtype))
    for name, m in layers:
        fresh = type(m)(m.num_features, eps=m.eps, affine=m.affine,
                        track_running_stats=m.track_running_stats).to(dtype)
        sub = {k[len(name) + 1:]: t for k, t in tensors.items() if k.startswith(name + ".")}
        fresh.load_state_dict(sub, strict=True)
        fresh.eval()
        x, y = seen[name]
        with torch.no_grad():
            assert torch.equal(fresh(x), y), name
    # and the whole model: its other tensors from torch, its batch norm layers from the file
    other = make_model().to(dtype)
    other.load_state_dict({**{k: v for k, v in state.items() if k not in tensors}, **tensors},
                          strict=True)
    other.eval()
    x = (torch.randn(2, 3, 9, 9) * 2).to(dtype)
    with torch.no_grad():
        assert torch.equal(other(x), model(x))


def test_one_layer_without_prefix_is_a_modules_own_state_dict(tmp_path):
    torch.manual_seed(3)
    m = nn.BatchNorm2d(4, momentum=None)
    m.train()
    for _ in range(3):
        m(torch.randn(5, 4, 3, 3) * 2 + 1)
    prefixes, states, keep = to_states([(None, m)])
    err = ctypes.create_string_buffer(512)
    path = tmp_path / "one.safetensors"
    assert state_lib.bn_state_write(str(path).encode(), None, states, err, 512) == BN_OK
    tensors, _, _ = safetensors.loads(path.read_bytes())
    assert list(tensors) == list(m.state_dict())
    fresh = nn.BatchNorm2d(4)
    fresh.load_state_dict(tensors, strict=True)
    assert int(fresh.num_batches_tracked) == 3
    for name in NAMES[:4]:
        assert torch.equal(getattr(fresh, name), getattr(m, name))
    # read back by the library: what it wrote
    out = BnState()
    assert state_lib.bn_state_read(ctypes.byref(out), str(path).encode(), b"", err, 512) == BN_OK
    got = arrays_of(out)
    state_lib.bn_state_free(ctypes.byref(out))
    assert got["num_batches_tracked"] == 3
    assert all(got[n].tobytes() == getattr(m, n).detach().numpy().tobytes() for n in NAMES[:4])


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path):
    model = trained_model(torch.float32)
    path = tmp_path / "bn.safetensors"
    path.write_bytes(b"precious")
    layers = bn_layers(model)
    # the same layer twice: the same keys
    st, msg = write_layers(path, [("a.", layers[0][1]), ("a", layers[1][1])])
    assert st == BN_ERR_ARGUMENT and msg.startswith('two layers would write "a.'), msg
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bn.safetensors"]
    st, msg = write_layers(tmp_path / "none" / "x.safetensors", layers)
    assert st == BN_ERR_IO and msg, msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bn.safetensors"]


# ---------------------------------------------------------------------------------------------
# The header's example, the C suite, the library's exports, install, a build without cJSON.

def header_example():
    text = (REPO / "include" / "bnorm_state.h").read_text()
    block = text.split(" * EXAMPLE", 1)[1].split(" * Writing,", 1)[0]
    code = "\n".join(re.sub(r"^ \*( {3})?", "", line) for line in block.splitlines()[1:])
    assert "int main(int argc, char **argv)" in code
    return code


def compile_example(tmp_path, flags):
    src = tmp_path / "example.c"
    src.write_text(header_example())
    exe = tmp_path / "example"
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", str(src), "-o",
                    str(exe), *flags], check=True)
    return exe


def check_example(exe, tmp_path):
    """The example on a torch checkpoint: each layer's y[0] and y[m - 1] as torch computes them
    on the example's input; a prefix that is no layer fails with a message."""
    model = trained_model(torch.float32)
    path = tmp_path / "model.safetensors"
    checkpoint(model, path)
    names = ["bn", "layer1.0.bn1", "layer1.1.bn2"]
    out = subprocess.run([str(exe), str(path), *names], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(names)
    for line, name in zip(lines, names):
        m = model.get_submodule(name)
        x = ((torch.arange(2 * m.num_features * 4) % 7).float() - 3).reshape(2, -1, 2, 2)
        with torch.no_grad():
            y = torch.nn.functional.batch_norm(x.double(), m.running_mean.double(),
                                               m.running_var.double(),
                                               None if m.weight is None else m.weight.double(),
                                               None if m.bias is None else m.bias.double(),
                                               False, 0.0, 1e-5).reshape(-1)
        got = re.fullmatch(rf"{re.escape(name)}: C = (\d+), num_batches_tracked = 6, "
                           r"y\[0\] = (\S+), y\[(\d+)\] = (\S+)", line)
        assert got, line
        assert int(got[1]) == m.num_features and int(got[3]) == y.numel() - 1
        for value, want in ((got[2], y[0]), (got[4], y[-1])):
            assert abs(float(value) - float(want)) <= 1e-6 * max(1.0, abs(float(want))), line
    bad = subprocess.run([str(exe), str(path), "layer1.0.conv1"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "\"layer1.0.conv1.weight\" without" in bad.stderr


def test_header_example_runs_on_a_torch_checkpoint(tmp_path):
    exe = compile_example(tmp_path, ["-I" + str(REPO / "include"),
                                     str(BUILD / "libbnorm_state.a"), "-lcjson",
                                     str(BUILD / "libbnorm.a"), "-fopenmp", "-lm"])
    check_example(exe, tmp_path)


def test_c_suite():
    """tests/state/test_state.c: its suites, every check passing."""
    r = subprocess.run([str(BUILD / "test_bnorm_state")], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    passed, failed = map(int, re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M).groups())
    assert failed == 0 and passed > 400


def declared():
    text = (REPO / "include" / "bnorm_state.h").read_text()
    found = re.findall(r"^(BN_API )?(?:const )?\w+ \**(bn_\w+)\(", text, re.M)
    assert all(mark for mark, _ in found), found
    return {name for _, name in found}


def test_exports_bnorm_state_h_only_and_needs_cjson_not_libbnorm():
    names = declared()
    assert len(names) == 7
    out = subprocess.run(["nm", "-D", "--defined-only", str(STATE_SO)], capture_output=True,
                         text=True, check=True).stdout
    assert {line.split()[-1].split("@")[0] for line in out.splitlines()} == names
    needed = re.findall(r"^\s*NEEDED\s+(\S+)$", subprocess.run(
        ["objdump", "-p", str(STATE_SO)], capture_output=True, text=True, check=True).stdout,
        re.M)
    assert any(n.startswith("libcjson.so") for n in needed), needed
    assert not any(n.startswith("libbnorm") for n in needed), needed
    # the static archive: the same global functions, io/'s made local
    out = subprocess.run(["nm", "-g", "--defined-only", str(BUILD / "libbnorm_state.a")],
                         capture_output=True, text=True, check=True).stdout
    assert {line.split()[-1] for line in out.splitlines() if re.match(r"^[0-9a-f]+ ", line)} \
        == names
    # and libbnorm stays free of cJSON
    core_needed = subprocess.run(["objdump", "-p", str(BUILD / "libbnorm.so")],
                                 capture_output=True, text=True, check=True).stdout
    assert "cjson" not in core_needed.lower()


def make(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args],
                          env=dict(base, **env), capture_output=True, text=True, timeout=900)


def test_make_install_installs_it_with_pkg_config(tmp_path):
    prefix = tmp_path / "prefix"
    r = make("-s", "install", "PREFIX=" + str(prefix), "BUILD=" + str(BUILD), "PYTHON_SITE=")
    assert r.returncode == 0, r.stderr
    version = re.search(r"Version: (\S+)", (prefix / "lib/pkgconfig/bnorm.pc").read_text())[1]
    for name in ["include/bnorm_state.h", "lib/libbnorm_state.a",
                 f"lib/libbnorm_state.so.{version}", "lib/pkgconfig/bnorm_state.pc"]:
        assert (prefix / name).is_file(), name
    for link in ["lib/libbnorm_state.so", "lib/libbnorm_state.so." + version.split(".")[0]]:
        assert os.readlink(prefix / link) == f"libbnorm_state.so.{version}", link
    pkg = shutil.which("pkg-config")
    assert pkg, "pkg-config is needed: apt-get install pkgconf"
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib/pkgconfig"))
    flags = subprocess.run([pkg, "--cflags", "--libs", "bnorm_state"], capture_output=True,
                           text=True, check=True, env=env).stdout.split()
    assert "-lbnorm_state" in flags and "-lbnorm" in flags  # Requires: bnorm
    exe = compile_example(tmp_path, flags + ["-Wl,-rpath," + str(prefix / "lib")])
    ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, check=True).stdout
    assert str(prefix / "lib/libbnorm_state.so") in ldd
    check_example(exe, tmp_path)


def test_built_only_where_cjson_is_found(tmp_path):
    """make -n of a fresh build: with cJSON, all builds libbnorm_state; without it (HAVE_CJSON=
    stands for a machine without cJSON), neither all nor demo nor install touches it."""
    fresh = tmp_path / "build"
    r = make("-n", "all", "BUILD=" + str(fresh))
    assert r.returncode == 0, r.stderr
    assert "libbnorm_state.so" in r.stdout and "test_bnorm_state" in r.stdout
    for goal in ("all", "demo", "install"):
        r = make("-n", goal, "BUILD=" + str(fresh), "HAVE_CJSON=", "PREFIX=" + str(tmp_path))
        assert r.returncode == 0, r.stderr
        assert "state" not in r.stdout, goal
        assert "libbnorm.a" in r.stdout
