"""libbpf through ctypes: open, load and attach a BPF object, read its maps.

bpftool covers loading and pinning the path managers, but it cannot keep
a tracing program attached after it exits, every `bpftool map dump`
formats the whole map as JSON (0.9 s under TCG for the event recorder's
2048 slots, which the tests read many times), and each of its runs costs
0.12 s of exec under TCG. A program that traces for as long as a process
runs, map reads (formatted from the map's BTF as bpftool formats them,
dump()), and the cgroup attach and detach of every test's PM call libbpf
itself. Debian 12 ships libbpf 1.1 (libbpf1); its Python binding does not
exist, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os

_lib = None


def _libbpf():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        vp = ctypes.c_void_p
        for name, res, args in (
                ("bpf_object__open_file", vp, [ctypes.c_char_p, vp]),
                ("bpf_object__load", ctypes.c_int, [vp]),
                ("bpf_object__close", None, [vp]),
                ("bpf_object__next_program", vp, [vp, vp]),
                ("bpf_object__find_map_by_name", vp, [vp, ctypes.c_char_p]),
                ("bpf_program__attach", vp, [vp]),
                ("bpf_program__name", ctypes.c_char_p, [vp]),
                ("bpf_link__destroy", ctypes.c_int, [vp]),
                ("bpf_map__fd", ctypes.c_int, [vp]),
                ("bpf_map__key_size", ctypes.c_uint32, [vp]),
                ("bpf_map__value_size", ctypes.c_uint32, [vp]),
                ("libbpf_get_error", ctypes.c_long, [vp]),
                ("bpf_obj_get", ctypes.c_int, [ctypes.c_char_p]),
                ("bpf_prog_attach", ctypes.c_int,
                 [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint]),
                ("bpf_prog_detach2", ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int]),
                ("bpf_map_lookup_elem", ctypes.c_int, [ctypes.c_int, vp, vp]),
                ("bpf_map_update_elem", ctypes.c_int, [ctypes.c_int, vp, vp, ctypes.c_uint64]),
                ("bpf_map_delete_elem", ctypes.c_int, [ctypes.c_int, vp]),
                ("bpf_map_get_next_key", ctypes.c_int, [ctypes.c_int, vp, vp]),
                ("bpf_obj_get_info_by_fd", ctypes.c_int,
                 [ctypes.c_int, vp, ctypes.POINTER(ctypes.c_uint32)]),
                ("btf__load_from_kernel_by_id", vp, [ctypes.c_uint32]),
                ("btf__parse", vp, [ctypes.c_char_p, vp]),
                ("btf__find_by_name_kind", ctypes.c_int, [vp, ctypes.c_char_p, ctypes.c_uint32]),
                ("btf__type_by_id", vp, [vp, ctypes.c_uint32]),
                ("btf__name_by_offset", ctypes.c_char_p, [vp, ctypes.c_uint32]),
                ("btf__free", None, [vp])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _lib = lib
    return _lib


def _check(what: str, ret) -> None:
    if ret is None or (isinstance(ret, int) and ret < 0):
        err = ctypes.get_errno() or (-ret if isinstance(ret, int) else 0)
        raise OSError(err, f"libbpf: {what}: {os.strerror(err)}")


BPF_CGROUP_SOCK_OPS = 3     # enum bpf_attach_type
BPF_F_ALLOW_MULTI = 1 << 1


def cgroup_sock_ops(prog_pin: str, cgroup: str, attach: bool) -> None:
    """Attach (in multi mode) or detach the sock_ops program pinned at
    `prog_pin` on `cgroup`: what `bpftool cgroup attach|detach ... multi`
    does, without its 0.12 s of exec under TCG."""
    lib = _libbpf()
    prog = lib.bpf_obj_get(prog_pin.encode())
    _check(f"bpf_obj_get {prog_pin}", prog)
    try:
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if attach:
                ret = lib.bpf_prog_attach(prog, cg, BPF_CGROUP_SOCK_OPS, BPF_F_ALLOW_MULTI)
            else:
                ret = lib.bpf_prog_detach2(prog, cg, BPF_CGROUP_SOCK_OPS)
            _check(f"{'attach' if attach else 'detach'} {prog_pin} on {cgroup}", ret)
        finally:
            os.close(cg)
    finally:
        os.close(prog)


class Map:
    """One map of a loaded object; keys and values are bytes."""

    def __init__(self, fd: int, key_size: int, value_size: int):
        self.fd, self.key_size, self.value_size = fd, key_size, value_size

    def lookup(self, key: bytes) -> bytes | None:
        lib = _libbpf()
        val = ctypes.create_string_buffer(self.value_size)
        if lib.bpf_map_lookup_elem(self.fd, key, val):
            return None
        return val.raw

    def update(self, key: bytes, value: bytes) -> None:
        _check("map update", _libbpf().bpf_map_update_elem(self.fd, key, value, 0))

    def delete(self, key: bytes) -> None:
        _libbpf().bpf_map_delete_elem(self.fd, key)

    def keys(self) -> list[bytes]:
        lib = _libbpf()
        out, prev = [], None
        nxt = ctypes.create_string_buffer(self.key_size)
        while not lib.bpf_map_get_next_key(self.fd, prev, nxt):
            out.append(nxt.raw)
            prev = ctypes.create_string_buffer(nxt.raw, self.key_size)
        return out

    def items(self) -> list[tuple[bytes, bytes]]:
        out = []
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                out.append((k, v))
        return out

    def clear(self) -> None:
        for k in self.keys():
            self.delete(k)

    def close(self) -> None:
        os.close(self.fd)


class Object:
    """A BPF object whose programs are attached the way their SEC() names
    say (tp_btf/..., fentry/...) for as long as the `with` block lasts."""

    def __init__(self, path: str):
        self.path = path
        self.obj = None
        self.links: list = []

    def __enter__(self) -> "Object":
        lib = _libbpf()
        obj = lib.bpf_object__open_file(self.path.encode(), None)
        if not obj or lib.libbpf_get_error(obj):
            _check(f"open {self.path}", -(ctypes.get_errno() or 22))
        self.obj = obj
        try:
            _check(f"load {self.path} (the verifier log went to stderr)", lib.bpf_object__load(obj))
            prog = lib.bpf_object__next_program(obj, None)
            while prog:
                link = lib.bpf_program__attach(prog)
                if not link or lib.libbpf_get_error(link):
                    name = lib.bpf_program__name(prog).decode()
                    _check(f"attach {name}", -(ctypes.get_errno() or 22))
                self.links.append(link)
                prog = lib.bpf_object__next_program(obj, prog)
        except BaseException:
            self.__exit__()
            raise
        return self

    def map(self, name: str) -> Map:
        lib = _libbpf()
        m = lib.bpf_object__find_map_by_name(self.obj, name.encode())
        if not m:
            raise KeyError(f"{self.path} has no map {name!r}")
        return Map(lib.bpf_map__fd(m), lib.bpf_map__key_size(m), lib.bpf_map__value_size(m))

    def __exit__(self, *exc) -> None:
        lib = _libbpf()
        for link in self.links:
            lib.bpf_link__destroy(link)
        self.links = []
        if self.obj:
            lib.bpf_object__close(self.obj)
            self.obj = None


class MapInfo(ctypes.Structure):
    """struct bpf_map_info (include/uapi/linux/bpf.h), up to map_extra."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("map_extra", ctypes.c_uint64)]


BPF_MAP_TYPE_ARRAY = 2
# BTF kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FLOAT, TYPE_TAG, ENUM64 = 16, 18, 19
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4


class Btf:
    """A BTF object loaded from the kernel, and values formatted by it the
    way bpftool's JSON output formats them (ints as numbers, structs as
    objects, arrays as lists, enums by name, bools as booleans)."""

    def __init__(self, btf, what: str):
        self.lib = _libbpf()
        if not btf:
            _check(what, -(ctypes.get_errno() or 22))
        self.btf = btf
        self._formatters: dict[int, object] = {}

    @classmethod
    def from_kernel(cls, btf_id: int) -> "Btf":
        return cls(_libbpf().btf__load_from_kernel_by_id(btf_id), f"load BTF {btf_id}")

    @classmethod
    def from_file(cls, path: str) -> "Btf":
        """The BTF of an object file (a compiled .bpf.o)."""
        return cls(_libbpf().btf__parse(path.encode(), None), f"parse BTF of {path}")

    def find(self, name: str, kind: int) -> int:
        tid = self.lib.btf__find_by_name_kind(self.btf, name.encode(), kind)
        if tid < 0:
            raise KeyError(f"no BTF type {name!r} of kind {kind}")
        return tid

    def close(self) -> None:
        if self.btf:
            self.lib.btf__free(self.btf)
            self.btf = None

    def _type(self, tid: int):
        """(kind, name, size-or-type, vlen, kflag, address of what follows)."""
        ptr = self.lib.btf__type_by_id(self.btf, tid)
        if not ptr:
            raise ValueError(f"BTF has no type {tid}")
        name_off, info, size = (ctypes.c_uint32 * 3).from_address(ptr)
        name = self.lib.btf__name_by_offset(self.btf, name_off) or b""
        return (info >> 24) & 0x1F, name.decode(), size, info & 0xFFFF, info >> 31, ptr + 12

    def size(self, tid: int) -> int:
        kind, _, size, _, _, extra = self._type(tid)
        if kind in (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG):
            return self.size(size)
        if kind == ARRAY:
            elem, _, n = (ctypes.c_uint32 * 3).from_address(extra)
            return self.size(elem) * n
        if kind == PTR:
            return 8
        return size

    def format(self, tid: int, data: bytes, off: int = 0):
        return self.formatter(tid)(data, off)

    def formatter(self, tid: int):
        """f(data, off) formatting a value of type `tid`, built once per
        type: a map dump formats thousands of values of the same few
        types, and walking the BTF again for each costs seconds under TCG."""
        f = self._formatters.get(tid)
        if f is None:
            f = self._formatters[tid] = self._compile(tid)
        return f

    def _compile(self, tid: int):
        kind, name, size, vlen, kflag, extra = self._type(tid)
        if kind in (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG):
            return self.formatter(size)
        if kind == INT:
            enc = ctypes.c_uint32.from_address(extra).value
            bits, encoding = enc & 0xFF, (enc >> 24) & 0x0F
            if encoding & INT_BOOL:
                zero = bytes(size)
                return lambda data, off: data[off:off + size] != zero
            if encoding & INT_CHAR:
                return lambda data, off: chr(data[off])
            if bits > 64:
                return lambda data, off: "0x" + data[off:off + size][::-1].hex().lstrip("0") \
                    .rjust(1, "0")
            signed = bool(encoding & INT_SIGNED)
            return lambda data, off: int.from_bytes(data[off:off + size], "little",
                                                    signed=signed)
        if kind == PTR:
            return lambda data, off: int.from_bytes(data[off:off + 8], "little")
        if kind in (ENUM, ENUM64):
            # struct btf_enum {name_off, val} / btf_enum64 {name_off, lo32, hi32}
            step, mask = (8, 0xFFFFFFFF) if kind == ENUM else (12, (1 << 64) - 1)
            names = {}
            for i in range(vlen):
                w = (ctypes.c_uint32 * (step // 4)).from_address(extra + i * step)
                val = w[1] if kind == ENUM else w[1] | (w[2] << 32)
                names.setdefault(val & mask, self.lib.btf__name_by_offset(self.btf, w[0])
                                 .decode())

            def enum(data, off):
                raw = int.from_bytes(data[off:off + size], "little", signed=True)
                return names.get(raw & mask, raw)
            return enum
        if kind == ARRAY:
            elem, _, n = (ctypes.c_uint32 * 3).from_address(extra)
            esize, fmt = self.size(elem), self.formatter(elem)
            return lambda data, off: [fmt(data, off + i * esize) for i in range(n)]
        if kind in (STRUCT, UNION):
            members = []
            for i in range(vlen):
                name_off, mtype, moff = (ctypes.c_uint32 * 3).from_address(extra + i * 12)
                mname = (self.lib.btf__name_by_offset(self.btf, name_off) or b"").decode()
                bit_size, bit_off = (moff >> 24, moff & 0xFFFFFF) if kflag else (0, moff)
                members.append((mname, bit_size, bit_off,
                                None if bit_size else self.formatter(mtype)))

            def struct(data, off):
                out = {}
                for mname, bit_size, bit_off, fmt in members:
                    if bit_size:
                        word = int.from_bytes(data[off:off + size], "little")
                        out[mname] = (word >> bit_off) & ((1 << bit_size) - 1)
                    else:
                        out[mname] = fmt(data, off + bit_off // 8)
                return out
            return struct
        raise ValueError(f"BTF kind {kind} ({name or 'anonymous'}) is not formatted here")


def dump(path: str, nonzero: bool = False) -> list[dict] | None:
    """The pinned map at `path` as [{"key": ..., "value": ...}], formatted
    from its BTF; array slots whose value is all zero are left out if
    `nonzero`. None for a map without BTF (the caller asks bpftool)."""
    lib = _libbpf()
    m = pinned_map(path, 0, 0)
    try:
        info = MapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(f"map info of {path}", lib.bpf_obj_get_info_by_fd(m.fd, ctypes.byref(info),
                                                                  ctypes.byref(size)))
        if not info.btf_id or not info.btf_value_type_id:
            return None
        m.key_size, m.value_size = info.key_size, info.value_size
        if info.type == BPF_MAP_TYPE_ARRAY:
            keys = [i.to_bytes(4, "little") for i in range(info.max_entries)]
        else:
            keys = m.keys()
        btf = Btf.from_kernel(info.btf_id)
        try:
            zero = bytes(info.value_size)
            out = []
            for k in keys:
                v = m.lookup(k)
                if v is None or (nonzero and v == zero):
                    continue
                out.append({"key": btf.format(info.btf_key_type_id, k) if info.btf_key_type_id
                            else int.from_bytes(k, "little"),
                            "value": btf.format(info.btf_value_type_id, v)})
            return out
        finally:
            btf.close()
    finally:
        m.close()


def pinned_map(path: str, key_size: int, value_size: int) -> Map:
    """A map pinned on bpffs (as bpftool pins a PM's maps); close() it."""
    fd = _libbpf().bpf_obj_get(path.encode())
    _check(f"open pinned map {path}", fd)
    return Map(fd, key_size, value_size)
