"""Writes tests/fuzz/corpus/state, the seeds of fuzz_state.c: batch norm layers' states under the
prefixes the target tries ("", "bn.", "layer1.0.bn1.", "a"), as torch's state_dict names them,
among tensors of other dtypes, and broken ones (a missing partner, mixed shapes and dtypes, a
count of the wrong kind). Kept under the 4096 bytes `make fuzz` lets an input grow to.
Run: /usr/bin/python3 tests/fuzz/make_state_seeds.py (needs numpy)."""
import json
import struct
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CODES = {"float32": "F32", "float64": "F64", "int64": "I64", "bool": "BOOL", "uint8": "U8",
         "int32": "I32", "float16": "F16"}


def safetensors_bytes(tensors, metadata=None):
    """tensors: name -> numpy array, in the order given."""
    header, data = {}, b""
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": CODES[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def layer(prefix, c, dtype=np.float32, affine=True, running=True, count=np.array(3)):
    out = {}
    if affine:
        out[prefix + "weight"] = (1 + np.arange(c) / 8).astype(dtype)
        out[prefix + "bias"] = (np.arange(c) / 4 - 0.5).astype(dtype)
    if running:
        out[prefix + "running_mean"] = np.linspace(-1, 1, c).astype(dtype)
        out[prefix + "running_var"] = np.linspace(0.5, 2, c).astype(dtype)
        if count is not None:
            out[prefix + "num_batches_tracked"] = count.astype(np.int64)
    return out


def main():
    out = HERE / "corpus" / "state"
    out.mkdir(parents=True, exist_ok=True)
    f16 = layer("bn.", 2)
    f16["bn.weight"] = f16["bn.weight"].astype(np.float16)
    f16["bn.bias"] = f16["bn.bias"].astype(np.float16)
    mixed = layer("bn.", 3)
    mixed["bn.bias"] = mixed["bn.bias"].astype(np.float64)
    short = layer("bn.", 3)
    short["bn.running_var"] = short["bn.running_var"][:2]
    lone = layer("bn.", 3)
    del lone["bn.bias"]
    seeds = {
        "torch_bn": safetensors_bytes(layer("bn.", 4), {"format": "pt"}),
        "module_own": safetensors_bytes(layer("", 3)),
        "resnet_like": safetensors_bytes({
            "conv1.weight": np.ones((2, 1, 3, 3), np.float32),
            **layer("layer1.0.bn1.", 2, count=np.array([7])),
            **layer("layer1.0.bn10.", 2, running=False),
            "mask": np.array([True, False]), "codes": np.arange(3, dtype=np.uint8),
            "index": np.arange(2, dtype=np.int32), "half": np.ones(2, np.float16)},
            {"format": "pt"}),
        "f64_affine_false": safetensors_bytes(layer("a.", 3, np.float64, affine=False)),
        "no_count": safetensors_bytes(layer("bn.", 2, count=None)),
        "stats_only": safetensors_bytes(layer("bn.", 5, affine=False, running=True)),
        "f16_layer": safetensors_bytes(f16),
        "mixed_dtypes": safetensors_bytes(mixed),
        "mixed_channels": safetensors_bytes(short),
        "lone_weight": safetensors_bytes(lone),
        "float_count": safetensors_bytes(layer("bn.", 2) | {
            "bn.num_batches_tracked": np.array(2.0)}),
        "negative_count": safetensors_bytes(layer("bn.", 2, count=np.array(-4))),
    }
    for name, data in seeds.items():
        assert len(data) <= 4096, name
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main()
