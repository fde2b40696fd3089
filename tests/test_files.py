import os
import stat

import pytest

from faclip.files import atomic_dir, atomic_path, sha256_dir, write_json


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
