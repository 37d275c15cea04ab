import os

from bpfpm import results


def test_latest_names_the_run_that_finished_last(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFPM_RESULTS", str(tmp_path))
    a = results.new_run("test")
    b = results.new_run("test")
    assert a != b and a.is_dir() and b.is_dir()
    assert not (tmp_path / "latest").exists(), "starting a run does not move latest"
    results.finish_run(b)
    assert os.readlink(tmp_path / "latest") == b.name
    results.finish_run(a)                       # a started first but finished last
    assert (tmp_path / "latest").resolve() == a.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name, "latest"])


def test_a_run_dir_elsewhere_is_linked_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFPM_RESULTS", str(tmp_path / "results"))
    (tmp_path / "results").mkdir()
    run = tmp_path / "elsewhere"
    run.mkdir()
    results.finish_run(run)
    assert (tmp_path / "results" / "latest").resolve() == run.resolve()
