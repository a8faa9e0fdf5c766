"""safetensors files of torch tensors, written and parsed here from the format's description
(torch 1.13 has no safetensors package): 8 bytes, the header's length N, unsigned little-endian;
N bytes of JSON {"KEY": {"dtype", "shape", "data_offsets": [BEGIN, END]}, "__metadata__": {...}},
padded with spaces; then the tensors' raw little-endian bytes, C order, offsets relative to the
start of that data. Used by tests/state/make_state_golden.py and tests/python/test_state.py."""
import json
import struct
import sys

import torch

assert sys.byteorder == "little", "these files hold the machine's bytes as they are"

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.bool: "BOOL",
          torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
          torch.bfloat16: "BF16", torch.int32: "I32"}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPES.items()}


def raw_bytes(t):
    """A tensor's elements as bytes, C order."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def dumps(tensors, metadata=None):
    """tensors: {key: torch.Tensor}, in the order given (torch's save_file sorts them; any order
    is valid)."""
    header, data = {}, bytearray()
    for key, t in tensors.items():
        raw = raw_bytes(t)
        header[key] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                       "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(data)


def loads(blob):
    """(tensors {key: torch.Tensor}, metadata or None, the header as parsed) of a file's bytes,
    every entry checked: known dtype, a span matching the shape, tensors tiling the data."""
    (n,) = struct.unpack_from("<Q", blob)
    header = json.loads(blob[8:8 + n].decode())
    data = blob[8 + n:]
    metadata = header.get("__metadata__")
    tensors, spans = {}, []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype = TORCH_DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        count = 1
        for d in entry["shape"]:
            count *= d
        assert end - begin == count * torch.empty(0, dtype=dtype).element_size(), key
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.uint8) if end > begin else (
            torch.empty(0, dtype=torch.uint8))
        tensors[key] = t.view(dtype).reshape(entry["shape"])
        spans.append((begin, end))
    at = 0
    for begin, end in sorted(spans):
        assert begin == at, "a hole or an overlap in the data"
        at = end
    assert at == len(data), "bytes after the last tensor"
    return tensors, metadata, header
