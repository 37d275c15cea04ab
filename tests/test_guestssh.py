"""What the guest may see of the host's keys, and the key set-up."""

import os
import subprocess

from bpfpm import guestssh


def test_hidden_dirs_are_empty_inside_the_namespace_only(tmp_path):
    secret = tmp_path / "keys" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_text("PRIVATE")
    argv = guestssh.private_namespace([secret.parent]) + ["sh", "-c", f"ls -A {secret.parent}; "
                                                           f"cat {secret} 2>&1; echo $$"]
    r = subprocess.run(argv, capture_output=True, text=True)
    assert "PRIVATE" not in r.stdout and "No such file" in r.stdout, r
    assert secret.read_text() == "PRIVATE", "outside the namespace nothing changed"


def test_stubs_replace_files_inside_the_namespace_only(tmp_path):
    hidden, real, stub = tmp_path / "hidden", tmp_path / "udevadm", tmp_path / "stub"
    hidden.mkdir()
    real.write_text("REAL")
    stub.write_text("STUB")
    argv = guestssh.private_namespace([hidden], {real: stub}) + ["cat", str(real)]
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "STUB", r
    assert real.read_text() == "REAL", "outside the namespace nothing changed"


def test_the_guest_stubs_exist_and_udev_is_among_them():
    from bpfpm import vm
    stubs = vm.guest_stubs()
    assert any(t.name == "udevadm" for t in stubs), stubs
    assert all(s.is_file() and os.access(s, os.X_OK) for s in stubs.values())


def test_keys_are_made_once_and_only_ours_is_authorised(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFPM_CACHE", str(tmp_path))
    k = guestssh.keys()
    again = guestssh.keys()
    assert k == again and k.client.read_text() == again.client.read_text()
    assert (k.client.stat().st_mode & 0o077) == 0
    assert (k.guest_dir / "authorized_keys").read_text() == \
        k.client.with_suffix(".pub").read_text()
    assert k.client_dir in guestssh.hidden_dirs(k)
    assert not (k.guest_dir / "id_ed25519").exists(), "the client key is not shared"
