"""`make bench` at its smoke size, so that the bench cannot rot: every
figure is produced from real traffic on every contender, and the BPF path
manager gets every burst connection its full subflow set (the seed's
"loses no events"). Speeds are reported in bench.md, never asserted."""

import json

import pytest

from bpfpm import bench

pytestmark = pytest.mark.vm


def test_bench_smoke_measures_every_figure(vm, pm_objects, run_dir, measure):
    objs = {name: pm_objects[name] for name in bench.OBJECTS}
    out = run_dir / "bench"
    out.mkdir(exist_ok=True)

    fig = bench.run_in(vm, objs, "smoke", out)

    for c in bench.CONTENDERS:
        lat = fig[f"latency_{c}"]
        assert lat["complete"] == lat["n"] > 0, f"{c}: connections without 4 subflows: {lat}"
        assert fig["p4"][c]["mbit"] > 0
    assert fig["p3"]["bpf"]["share"] == 1.0, fig["p3"]
    assert fig["p3"]["kernel"]["share"] == 1.0, fig["p3"]
    assert fig["p6"]["syn_median_us"] is not None, fig["p6"]
    for key in ("p1", "p2"):
        assert fig[key]["median"] is not None, fig[key]
    assert any(r["created"] > 0 for r in fig["uspm"]), fig["uspm"]
    for name in ("bench.json", "bench.md", *fig["plots"]):
        assert (out / name).stat().st_size > 0, name
    measure("bench_smoke", json.loads((out / "bench.json").read_text())["figures"])
