import errno
import os
import stat
import subprocess
import sys

import pytest

from faclip.errors import FaclipError
from faclip.files import (RefusedFile, atomic_dir, atomic_path, atomic_paths, image_size_problem, read_regular_file,
                          remove_stale_temps, resolve_under_root, sha256_dir, unhashable_entries, write_json)


def test_atomic_path_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_dir_swaps_whole_folder(tmp_path):
    target = tmp_path / "model"
    (target).mkdir()
    (target / "stale.bin").write_text("x")
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_artifacts_get_umask_permissions_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_write_json_deterministic_and_sha256_dir_sees_names_and_bytes(tmp_path):
    write_json(tmp_path / "a/x.json", {"b": 1, "a": "قورمه"})
    assert (tmp_path / "a/x.json").read_text(encoding="utf-8") == '{\n  "a": "قورمه",\n  "b": 1\n}\n'
    before = sha256_dir(tmp_path / "a")
    (tmp_path / "a/x.json").rename(tmp_path / "a/y.json")
    assert sha256_dir(tmp_path / "a") != before


# --- reading a data folder: regular files under the root, bounded -------------------------------


def refused(path, root, max_bytes=1 << 20) -> str:
    with pytest.raises(RefusedFile) as err:
        read_regular_file(path, root, max_bytes)
    return err.value.kind


def test_read_regular_file_reads_files_and_refuses_everything_else(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.json").write_bytes(b"[]")
    os.symlink("a.json", root / "link.json")
    (tmp_path / "secret.json").write_bytes(b"{}")
    os.symlink(tmp_path / "secret.json", root / "out.json")
    os.symlink("loop.json", root / "loop.json")
    os.symlink("nowhere.json", root / "dangling.json")
    os.mkfifo(root / "fifo.json")
    os.symlink("/dev/zero", root / "zero.json")
    assert read_regular_file(root / "a.json", root, 2) == b"[]"
    assert read_regular_file(root / "link.json", root, 2) == b"[]"  # a symlink inside the root is fine
    assert refused(root / "a.json", root, 1) == "too_large"
    assert refused(root / "out.json", root) == "outside_root"
    assert refused(root / "zero.json", root) == "outside_root"
    assert refused(root / "loop.json", root) == "unreadable"
    assert refused(root / "dangling.json", root) == "missing"
    assert refused(root / "fifo.json", root) == "not_a_file"  # returns at once: a FIFO is never opened
    assert refused(root / "sub", root) == "not_a_file"
    assert refused(tmp_path / "secret.json", root) == "outside_root"


def test_a_device_under_the_root_is_not_read(tmp_path):
    # /dev as the data root: its devices are under the root, and none is read (nor opened).
    assert refused("/dev/zero", "/dev") == "not_a_file"
    assert refused("/dev/null", "/dev") == "not_a_file"


def test_resolve_under_root_survives_symlink_loops_and_nul(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("loop.jpg", root / "loop.jpg")
    assert resolve_under_root(root, root, "loop.jpg") == root / "loop.jpg"  # reading it is what fails
    assert resolve_under_root(root, root, "a\0b.jpg") is None
    assert resolve_under_root(root, root, "../x.jpg") is None


@pytest.mark.parametrize("size, kind", [((8001, 8000), "too_large"), ((64_001, 1000), "too_large"),
                                         ((12000, 12000), "too_large"), ((30000, 1), "extreme_aspect"),
                                         ((1, 21), "extreme_aspect")])
def test_image_size_problem(size, kind):
    assert image_size_problem(*size)[0] == kind
    assert "\n" not in image_size_problem(*size)[1]


@pytest.mark.parametrize("size", [(8000, 8000), (20, 1), (1, 1), (4000, 3000), (224, 4480)])
def test_image_size_problem_lets_real_photos_through(size):
    assert image_size_problem(*size) is None


def test_unhashable_entries_names_what_dvc_would_hang_or_fail_on(tmp_path):
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (root / "ok/a.jpg").write_bytes(b"x")
    os.symlink("ok", root / "dirlink")  # DVC lists a symlinked folder but does not enter it
    os.symlink("ok/a.jpg", root / "filelink.jpg")
    assert unhashable_entries(root) == []
    os.mkfifo(root / "ok/f.json")
    os.symlink("/dev/zero", root / "zero.json")
    os.symlink("nowhere", root / "dangling")
    os.symlink("loop", root / "loop")
    found = dict(unhashable_entries(root))
    assert found == {str(root / "ok/f.json"): "a FIFO (named pipe)", str(root / "zero.json"): "a character device",
                     str(root / "dangling"): "dangling symlink", str(root / "loop"): "Too many levels of symbolic links"}


# --- atomic writes: stale temps, full disk -------------------------------------------------------


def test_temps_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    # A writer killed by SIGKILL (no `finally` runs) leaves its temp folder beside the target.
    script = ("import os, signal, sys\n"
              "from faclip.files import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as tmp:\n"
              "    (tmp / 'half.bin').write_bytes(b'x' * 1000)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", script, str(folder / "abc")], check=False)
    (folder / ".abc.1a2b3c4d.tmp").mkdir()  # one from before temps carried their writer's pid
    (folder / ".other.99999999.x.tmp").write_text("another target's")
    stale = sorted(p.name for p in folder.iterdir())
    assert len(stale) == 3 and all(name.endswith(".tmp") for name in stale)
    with atomic_dir(folder / "abc") as tmp:
        (tmp / "whole.bin").write_bytes(b"y")
    assert sorted(p.name for p in folder.iterdir()) == [".other.99999999.x.tmp", "abc"]
    assert remove_stale_temps(folder) == [".other.99999999.x.tmp"]
    assert [p.name for p in folder.iterdir()] == ["abc"]


def test_a_live_writers_temp_is_kept(tmp_path):
    live = tmp_path / f".abc.{os.getpid()}.zz.tmp"
    live.mkdir()
    assert remove_stale_temps(tmp_path) == []
    assert live.exists()


def test_a_full_disk_is_one_line_and_leaves_the_old_files(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    with pytest.raises(FaclipError, match="no space left on the device") as err:
        with atomic_paths(tmp_path / "a.txt", tmp_path / "b.txt") as (a, b):
            a.write_text("new a")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(err.value)
    assert sorted((p.name, p.read_text()) for p in tmp_path.iterdir()) == [("a.txt", "old a"), ("b.txt", "old b")]
    with pytest.raises(FaclipError, match="no space left"):
        with atomic_dir(tmp_path / "d"):
            raise RuntimeError("[enforce fail at inline_container.cc:1] . PytorchStreamWriter failed writing file "
                               "data/0: No space left on device")
    assert not (tmp_path / "d").exists()
    with pytest.raises(ValueError):  # anything else passes through unchanged
        with atomic_path(tmp_path / "a.txt"):
            raise ValueError("a bug")


def test_run_main_turns_a_full_disk_anywhere_into_one_line(capsys):
    from faclip.errors import run_main

    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "metrics/train/plots.tsv")
    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("faclip error: no space left on the device (metrics/train/plots.tsv); "
                                       "free some space and rerun\n")


def test_run_main_names_the_way_back_only_in_a_stage_run_by_dvc(capsys, monkeypatch):
    from faclip.errors import GO_BACK, run_main

    def main():
        raise FaclipError("no valid (image, passage) pairs found under /data")

    for dvc_stage, suffix in ((None, ""), ("prepare", f"; {GO_BACK}")):  # DVC sets DVC_STAGE for a stage's command
        if dvc_stage:
            monkeypatch.setenv("DVC_STAGE", dvc_stage)
        else:
            monkeypatch.delenv("DVC_STAGE", raising=False)
        with pytest.raises(SystemExit) as exit_info:
            run_main(main)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"faclip error: no valid (image, passage) pairs found under /data{suffix}\n"
    assert "`git checkout -- params.yaml dvc.lock metrics && dvc checkout`" in GO_BACK
