"""The BTF formatter the guest reads maps with (bpfpm.guest.libbpf.Btf),
on a BPF object compiled here: values come out as bpftool's JSON shows
them (ints, bools, enums by name, structs, nested arrays)."""

import struct
import subprocess

import pytest

from bpfpm.guest.libbpf import STRUCT, Btf

SRC = r"""
#include <stdbool.h>
enum colour { RED = 1, GREEN = 2, MINUS = -3 };
struct addr { unsigned int family; unsigned int words[4]; };
struct value {
    unsigned long long big;
    int neg;
    unsigned char small[2][3];
    bool flag;
    char letter;
    enum colour colour;
    struct addr a;
};
struct value v;
"""


@pytest.fixture(scope="module")
def btf(tmp_path_factory):
    d = tmp_path_factory.mktemp("btf")
    (d / "v.c").write_text(SRC)
    r = subprocess.run(["clang", "-target", "bpf", "-g", "-O2", "-c", str(d / "v.c"),
                        "-o", str(d / "v.o")], capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"clang -target bpf failed (make setup installs clang): {r.stderr}")
    b = Btf.from_file(str(d / "v.o"))
    yield b
    b.close()


def test_a_struct_is_formatted_field_by_field(btf):
    tid = btf.find("value", STRUCT)
    data = struct.pack("<Qi6B?ci5I", 1 << 40, -7, 1, 2, 3, 4, 5, 6, True, b"x", 2,
                       10, 1, 2, 3, 4)
    data += bytes(btf.size(tid) - len(data))
    assert btf.format(tid, data) == {
        "big": 1 << 40, "neg": -7, "small": [[1, 2, 3], [4, 5, 6]], "flag": True,
        # clang gives char a plain signed encoding: bpftool shows a number too
        "letter": ord("x"), "colour": "GREEN",
        "a": {"family": 10, "words": [1, 2, 3, 4]}}


def test_an_enum_value_without_a_name_is_its_number(btf):
    tid = btf.find("value", STRUCT)
    for raw, shown in ((-3, "MINUS"), (7, 7)):
        data = struct.pack("<Qi6B?ci5I", 0, 0, 0, 0, 0, 0, 0, 0, False, b"\0", raw,
                           0, 0, 0, 0, 0)
        data += bytes(btf.size(tid) - len(data))
        assert btf.format(tid, data)["colour"] == shown
