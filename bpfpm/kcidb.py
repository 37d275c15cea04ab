"""A run's results as KCIDB I/O data (kcidb_io.schema.LATEST), the format of
KernelCI's common results database and its dashboards.

One checkout (the kernel source plus our patch series), one build (the
kernel, by its build key), one test per record. Checkout and build ids say
what was tested, not where: two shards of one CI run that booted the same
kernel report the same two ids, and merge() keeps one of each.

A run without kernel.json (host-only unit tests) booted no kernel and yields
a report with no objects: a KCIDB test hangs off a build, and one made up
for the occasion would sit in the database with nothing to show it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import urllib.parse
from pathlib import Path

import jsonschema
from kcidb_io.schema import LATEST as SCHEMA

SUITE = "bpfpm"                 # root of our tests' paths in the KCIDB test tree
STATUS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "SKIP"}
EXCERPT = 16384                 # log_excerpt's maxLength, in characters
LOG_KINDS = ("dmesg", "console")  # the artifact that becomes log_url, first found

_ORIGIN = re.compile(r"[a-z0-9_]+")             # the schema's origin pattern
_PATH_PART = re.compile(r"[^A-Za-z0-9_-]+")     # what a test path component cannot hold


def _text(s) -> str:
    """A string the schema accepts: every text field forbids NUL."""
    return str(s).replace("\0", "")


def _time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def test_path(nodeid: str) -> str:
    """The dotted KCIDB path of a pytest node id:
    vmtests/test_hooks.py::test_x[ipv4] -> bpfpm.vmtests.test_hooks.test_x.ipv4.
    Components keep only [A-Za-z0-9_-] (the rest becomes "_"), so a "." in a
    parameter cannot add a level."""
    head, bracket, param = nodeid.partition("[")
    file, *names = head.split("::")
    parts = [SUITE, *file.removesuffix(".py").split("/"), *names]
    if bracket:
        parts.append(param.removesuffix("]"))
    return ".".join(p for p in (_PATH_PART.sub("_", p) for p in parts) if p)


def patchset_hash(patches: list[Path]) -> str:
    """KCIDB's patchset_hash of patch files, which it defines: the sha256 of
    the patches' sha256 hex digests, one a line, in order ("" for none).
    Reads the files; our series_key (names and contents) is not this."""
    digests = "".join(hashlib.sha256(p.read_bytes()).hexdigest() + "\n" for p in patches)
    return hashlib.sha256(digests.encode()).hexdigest() if patches else ""


def _url(path: str, run_dir: Path, base_url: str | None) -> str | None:
    """Where a file can be fetched: under base_url if it is in the run dir,
    else (no base_url) a file:// URL. Percent-encoded: the schema checks URLs
    (RFC 3987), and "[ipv4]" in a bare path fails that."""
    root = Path(os.path.normpath(run_dir.absolute()))
    full = Path(os.path.normpath(root / path))        # absolute `path` replaces root
    if base_url is None:
        return full.as_uri()
    try:
        rel = full.relative_to(root)
    except ValueError:
        return None                                   # not published with the run
    return base_url.rstrip("/") + "/" + urllib.parse.quote(rel.as_posix())


def _drop_none(d: dict) -> dict:
    """The schema allows no nulls; in misc they would only say "unknown"."""
    return {k: v for k, v in d.items() if v is not None}


def checkout_id(kernel: dict, origin: str = "bpfpm") -> str:
    """Same source and same series, same checkout, whichever machine built it."""
    return _text(f"{origin}:{kernel.get('source_ident', 'unknown-source')}"
                 f":{kernel.get('series_key', 'unknown-series')}")


def build_id(kernel: dict, origin: str = "bpfpm") -> str:
    """The build key already covers source, series, config and toolchain."""
    return _text(f"{origin}:{kernel['key']}")


def _checkout(kernel: dict, origin: str) -> dict:
    patches = kernel.get("patches") or []
    co = {"id": checkout_id(kernel, origin), "origin": origin, "valid": True,
          "misc": _drop_none({"kernel": kernel.get("kernel"), "source": kernel.get("source"),
                              "source_ident": kernel.get("source_ident"),
                              "series_key": kernel.get("series_key"),
                              "patches": patches})}
    if kernel.get("source"):
        co["comment"] = _text(kernel["source"])
    # Only the schema's own hash, never series_key (another algorithm): a
    # series hashed by bpfpm.kcidb.patchset_hash can be passed in kernel.
    if kernel.get("patchset_hash") is not None:
        co["patchset_hash"] = kernel["patchset_hash"]
    elif not patches:
        co["patchset_hash"] = ""
    return co


def _build(kernel: dict, origin: str, run_dir: Path, base_url: str | None,
           arch: str) -> dict:
    debug = bool(kernel.get("debug"))
    b = {"id": build_id(kernel, origin), "checkout_id": checkout_id(kernel, origin),
         "origin": origin, "architecture": arch, "status": "PASS",
         "config_name": _text(f"{kernel.get('config_key', 'unknown-config')}"
                              + (" (debug)" if debug else "")),
         "misc": _drop_none({"key": kernel["key"], "config_key": kernel.get("config_key"),
                             "debug": debug, "release": kernel.get("release"),
                             "log": kernel.get("log")})}
    if kernel.get("toolchain"):
        b["compiler"] = _text(kernel["toolchain"])
    if kernel.get("release"):
        b["comment"] = _text(f"Linux {kernel['release']}")
    if isinstance(kernel.get("seconds"), (int, float)):
        b["duration"] = float(kernel["seconds"])
    if kernel.get("log") and (url := _url(kernel["log"], run_dir, base_url)):
        b["log_url"] = url
    return b


def _test(rec: dict, bid: str, run_name: str, origin: str, run_dir: Path,
          base_url: str | None) -> dict:
    nodeid = rec["nodeid"]
    outcome = rec.get("outcome")
    reruns = rec.get("reruns") or 0
    t = {"id": _text(f"{origin}:{run_name}:{nodeid}"), "build_id": bid, "origin": origin,
         "path": test_path(nodeid), "comment": _text(nodeid),
         "status": STATUS.get(outcome, "ERROR"),
         # A pass on rerun stays PASS (it did pass); misc says it was not plain.
         "misc": _drop_none({"nodeid": nodeid, "run": run_name, "outcome": outcome,
                             "reruns": reruns, "rerun_reasons": rec.get("rerun_reasons") or [],
                             "passed_on_rerun": outcome == "passed" and reruns > 0,
                             "flaky": bool(rec.get("flaky")),
                             "message": rec.get("message") or None,
                             "worker": rec.get("worker")})}
    if isinstance(rec.get("duration"), (int, float)):
        t["duration"] = float(rec["duration"])
    if isinstance(rec.get("start"), (int, float)):
        t["start_time"] = _time(rec["start"])
    if outcome not in ("passed", "skipped"):
        excerpt = _text(rec.get("longrepr") or rec.get("message") or "")
        if excerpt:
            t["log_excerpt"] = excerpt[-EXCERPT:]
    files = {str(k): str(v) for k, v in (rec.get("files") or {}).items()}
    log_kind = next((k for k in LOG_KINDS if k in files), None)
    if log_kind and (url := _url(files.pop(log_kind), run_dir, base_url)):
        t["log_url"] = url
    names = [Path(p).name for p in files.values()]
    outputs = []
    for kind, path in files.items():
        name = Path(path).name
        if not name or names.count(name) > 1:      # a file name, unique in this test
            name = f"{kind}-{name}" if name else kind
        if url := _url(path, run_dir, base_url):
            outputs.append({"name": _text(name.replace("/", "_")) or "file", "url": url})
    if outputs:
        t["output_files"] = outputs
    return t


def report(records: list[dict], kernel: dict | None, run_name: str, run_dir: Path, *,
           origin: str = "bpfpm", base_url: str | None = None,
           arch: str = "x86_64") -> dict:
    """KCIDB data for one run: `records` from tests.jsonl, `kernel` from
    kernel.json (None or {} when absent: no objects then, see above), file
    paths relative to `run_dir`, published under `base_url` if given (else
    file:// URLs; files outside the run dir then get none). Validated."""
    if not _ORIGIN.fullmatch(origin):
        raise ValueError(f"KCIDB origin {origin!r} must match [a-z0-9_]+")
    data = SCHEMA.new()
    if not kernel or not kernel.get("key"):
        return data
    bid = build_id(kernel, origin)
    data["checkouts"] = [_checkout(kernel, origin)]
    data["builds"] = [_build(kernel, origin, run_dir, base_url, arch)]
    data["tests"] = [_test(r, bid, run_name, origin, run_dir, base_url) for r in records]
    if kernel.get("vcpus"):     # the guest the tests ran in (SMP or not)
        env = {"comment": f"QEMU guest, {kernel['vcpus']} vCPU(s)",
               "misc": {"vcpus": kernel["vcpus"]}}
        for t in data["tests"]:
            t["environment"] = env
    ids = [t["id"] for t in data["tests"]]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"two records for one test: {dup}")
    validate(data)
    return data


def validate(data: dict) -> None:
    """Raise ValueError unless `data` is valid KCIDB data of the latest
    schema or an earlier one (kcidb_io takes both)."""
    try:
        SCHEMA.validate(data)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ValueError(f"not valid KCIDB {SCHEMA} data: {where}: {e.message}") from e


def merge(reports: list[dict]) -> dict:
    """One report from several (the shards of a CI run): objects of all,
    each id once. Copies of one checkout or build fold into one (the first
    report's fields win); two different tests under one id are an error,
    as keeping either would hide the other's result."""
    for r in reports:
        validate(r)
    merged = SCHEMA.merge(SCHEMA.new(), reports)      # upgrades older data too
    seen: dict[str, dict] = {}
    for t in merged.get("tests", []):
        if seen.setdefault(t["id"], t) != t:
            raise ValueError(f"two different results for test {t['id']}")
    merged = SCHEMA.dedup(merged, copy=False, pick_second=lambda: False)
    validate(merged)
    return merged
