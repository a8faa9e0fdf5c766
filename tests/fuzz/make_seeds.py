"""Writes the fuzzers' seed corpus: tests/fuzz/corpus/npy (small .npy files as NumPy writes
them, in every form the reader accepts, and a few broken ones), tests/fuzz/corpus/api (one
input per entry point of fuzz_api.c) and tests/fuzz/corpus/safetensors (statistics files as
`bnorm fit` and torch's safetensors write them, and broken ones).
Run: /usr/bin/python3 tests/fuzz/make_seeds.py"""
import io
import json
import struct
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def npy_bytes(a, version=None):
    buf = io.BytesIO()
    if version is None:
        np.save(buf, a)
    else:
        np.lib.format.write_array(buf, a, version=version)
    return buf.getvalue()


def safetensors_bytes(tensors, metadata=None, pad=True):
    """tensors: name -> numpy array (F32, F64, I64), in the order given."""
    header, data = {}, b""
    codes = {"float32": "F32", "float64": "F64", "int64": "I64"}
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": codes[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def main():
    npy = HERE / "corpus" / "npy"
    npy.mkdir(parents=True, exist_ok=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    seeds = {
        "f4_2x3": npy_bytes(x),
        "f8_4": npy_bytes(np.array([1.5, -2, np.nan, np.inf])),
        "f4_big_endian": npy_bytes(x.astype(">f4")),
        "f8_fortran_2x3x2": npy_bytes(np.asfortranarray(np.arange(12.0).reshape(2, 3, 2))),
        "f4_v2": npy_bytes(x, version=(2, 0)),
        "f8_v3": npy_bytes(np.arange(3.0), version=(3, 0)),
        "f8_scalar": npy_bytes(np.array(7.0)),
        "f4_empty_0x3": npy_bytes(np.zeros((0, 3), np.float32)),
        "i8_refused": npy_bytes(np.arange(3)),
        "f4_truncated": npy_bytes(x)[:-5],
        "f4_4d": npy_bytes(np.ones((2, 1, 2, 2), np.float32)),
        "f2_2x3": npy_bytes(x.astype(np.float16)),
        "f2_big_endian": npy_bytes(x.astype(">f2")),
    }
    for name, data in seeds.items():
        (npy / (name + ".npy")).write_bytes(data)

    st = HERE / "corpus" / "safetensors"
    st.mkdir(parents=True, exist_ok=True)
    stats = {"running_mean": np.array([0.5, -1, 2], np.float32),
             "running_var": np.array([1, 2, 3], np.float32),
             "num_batches_tracked": np.array(7, np.int64)}
    seeds = {
        "fit_stats": safetensors_bytes(stats, {"format": "pt"}),
        "prefixed_f64": safetensors_bytes({"bn.weight": np.ones(2), "bn.bias": np.zeros(2),
                                          "bn.running_mean": np.arange(2.0),
                                          "bn.running_var": np.ones(2)}, pad=False),
        "empty_header": safetensors_bytes({}),
        "matrix": safetensors_bytes({"m": np.arange(6, dtype=np.float32).reshape(2, 3)}),
        "unsupported_f16": safetensors_bytes({"h": np.ones(2, np.float32)}).replace(b"F32", b"F16"),
        "truncated": safetensors_bytes(stats)[:-3],
    }
    for name, data in seeds.items():
        (st / name).write_bytes(data)

    api = HERE / "corpus" / "api"
    api.mkdir(parents=True, exist_ok=True)
    # op, odd-descriptor byte, n, c, s, dtype/layout, then values (zeros when they run out)
    for op in range(8):
        for kind in (0, 1, 4, 5):
            head = bytes([op, 1, 4, 3, 5, kind])
            body = bytes((7 * k + op) % 251 for k in range(200))
            (api / f"op{op}_kind{kind}").write_bytes(head + body)


if __name__ == "__main__":
    main()
