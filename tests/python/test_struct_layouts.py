"""The ctypes copies of bnorm.h's structs (bnorm._lib's, and test_state.py's of bn_desc) have
the header's sizes and field offsets, as a C compiler lays them out: a copy that falls behind
the header (a field added) would let the library write past the Python object."""

import ctypes
import subprocess
from pathlib import Path

import bnorm._lib as lib
import test_state

REPO = Path(__file__).resolve().parents[2]
STRUCTS = {"bn_desc": lib.BnDesc, "bn_options": lib.BnOptions, "bn_moments": lib.BnMoments}


def c_layout(tmp_path):
    """{struct: (sizeof, {field: offsetof})} from a program compiled against include/bnorm.h."""
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "bnorm.h"', 'int main(void) {']
    for name, cls in STRUCTS.items():
        lines.append(f'printf("{name} size %zu\\n", sizeof({name}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{name} {field} %zu\\n", offsetof({name}, {field}));')
    lines.append("return 0; }")
    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run(["cc", "-I", str(REPO / "include"), str(src), "-o", str(exe)], check=True)
    out = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True,
                               text=True).stdout.splitlines():
        name, field, value = line.split()
        out.setdefault(name, {})[field] = int(value)
    return out


def test_ctypes_structs_match_the_header(tmp_path):
    layout = c_layout(tmp_path)
    for name, cls in STRUCTS.items():
        assert ctypes.sizeof(cls) == layout[name]["size"], name
        for field, _ in cls._fields_:
            assert getattr(cls, field).offset == layout[name][field], (name, field)
    assert ctypes.sizeof(test_state.BnDesc) == layout["bn_desc"]["size"]
    # every field of the header is in the copies: the sizes agree and none is left out
    assert [f for f, _ in lib.BnDesc._fields_] == [f for f, _ in test_state.BnDesc._fields_]
