"""Writes tests/state/torch_layers.safetensors, the checkpoint tests/state/test_state.c reads: a
small torch model's state_dict, trained a few steps so that every batch norm layer's weight,
bias and running statistics are its own, saved as safetensors by torch_safetensors.py, with:

  - the model's convolutions and four BatchNorm2d layers, each of another kind:
      bn               affine, tracking                   (C = 4)
      layer1.0.bn1     affine, tracking, momentum=None    (C = 6)
      layer1.0.bn2     affine=False                       (C = 6)
      layer1.0.bn10    track_running_stats=False          (C = 6; "bn1" must not find it)
  - double.bn.*  the bn layer's state in float64 (model.double()), half.bn.* in float16;
  - extra.*      tensors of other dtypes (BOOL, U8, I32, F16, BF16, I64 of shape ()), which a
                 reader of the layers must step over;
  - golden.P.x, golden.P.y  the input of layer P (P = bn, layer1.0.bn1, layer1.0.bn2,
                 double.bn) in an eval-mode forward pass of the model, and torch's eval output;
    golden.P.y64  the same layer run in float64 on the same input (the reference the library's
                 float32 promise is stated against).

Run: /usr/bin/python3 tests/state/make_state_golden.py (needs torch; deterministic)."""
import collections
import copy
import sys
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import torch_safetensors  # noqa: E402


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


def model():
    return nn.Sequential(collections.OrderedDict(
        conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4), relu=nn.ReLU(),
        layer1=nn.Sequential(Block(4, 6))))


def trained(steps=5):
    torch.manual_seed(0)
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6) * 2 + 1
        loss = (m(x) - 0.5).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def layer_io(m, names, x):
    """{name: (input, output)} of the named layers in an eval forward pass of m on x."""
    seen = {}
    hooks = [m.get_submodule(n).register_forward_hook(
        lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0].detach(), out.detach())))
        for n in names]
    with torch.no_grad():
        m(x)
    for h in hooks:
        h.remove()
    return seen


def golden():
    m = trained()
    tensors = dict(m.state_dict())
    m64 = trained().double()
    for key, t in m64.state_dict().items():
        if key.startswith("bn."):
            tensors["double." + key] = t
    m16 = trained().half()
    for key, t in m16.state_dict().items():
        if key.startswith("bn."):
            tensors["half." + key] = t
    tensors.update({
        "extra.mask": torch.tensor([True, False, True]),
        "extra.codes": torch.arange(5, dtype=torch.uint8),
        "extra.index": torch.arange(3, dtype=torch.int32),
        "extra.half": torch.tensor([1.5, -2.0], dtype=torch.float16),
        "extra.bf16": torch.tensor([0.25, 3.0], dtype=torch.bfloat16),
        "extra.step": torch.tensor(12345, dtype=torch.int64),
    })
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6) * 1.5 + 0.5
    names = ["bn", "layer1.0.bn1", "layer1.0.bn2"]
    for name, (inp, out) in layer_io(m, names, x).items():
        layer64 = copy.deepcopy(m.get_submodule(name)).double()
        with torch.no_grad():
            y64 = layer64(inp.double())
        tensors[f"golden.{name}.x"] = inp
        tensors[f"golden.{name}.y"] = out
        tensors[f"golden.{name}.y64"] = y64
    inp, out = layer_io(m64, ["bn"], x.double())["bn"]
    tensors["golden.double.bn.x"] = inp
    tensors["golden.double.bn.y"] = out
    tensors["golden.double.bn.y64"] = out
    return tensors


def main():
    blob = torch_safetensors.dumps(golden(), {"format": "pt"})
    (HERE / "torch_layers.safetensors").write_bytes(blob)
    print(f"wrote {HERE / 'torch_layers.safetensors'} ({len(blob)} bytes)")


if __name__ == "__main__":
    main()
