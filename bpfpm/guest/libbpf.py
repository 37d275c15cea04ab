"""libbpf through ctypes: open, load and attach a BPF object, read its maps.

bpftool covers what the path managers need (load, pin, attach to a
cgroup, dump a map), but it cannot keep a tracing program attached after
it exits, and every `bpftool map dump` formats the whole map as JSON. A
program that traces for as long as a process runs, and reads a few map
entries many times a second, calls libbpf itself. Debian 12 ships
libbpf 1.1 (libbpf1); its Python binding does not exist, hence ctypes.
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
                ("bpf_map_lookup_elem", ctypes.c_int, [ctypes.c_int, vp, vp]),
                ("bpf_map_update_elem", ctypes.c_int, [ctypes.c_int, vp, vp, ctypes.c_uint64]),
                ("bpf_map_delete_elem", ctypes.c_int, [ctypes.c_int, vp]),
                ("bpf_map_get_next_key", ctypes.c_int, [ctypes.c_int, vp, vp])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _lib = lib
    return _lib


def _check(what: str, ret) -> None:
    if ret is None or (isinstance(ret, int) and ret < 0):
        err = ctypes.get_errno() or (-ret if isinstance(ret, int) else 0)
        raise OSError(err, f"libbpf: {what}: {os.strerror(err)}")


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


def pinned_map(path: str, key_size: int, value_size: int) -> Map:
    """A map pinned on bpffs (as bpftool pins a PM's maps); close() it."""
    fd = _libbpf().bpf_obj_get(path.encode())
    _check(f"open pinned map {path}", fd)
    return Map(fd, key_size, value_size)
