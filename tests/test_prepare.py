"""prepare: JSON forms, every bad-input case (skipped, counted, never in the outputs), determinism, split."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image, ImageFile

from conftest import DISHES, REPO, draw_dish_image, make_raw_dataset
from faclip.errors import FaclipError
from faclip.prepare import prepare_dataset, split_images
from faclip.text import passage_id_for

GOOD = {"title": "فسنجان", "response": "فسنجان با گردو و رب انار پخته می‌شود."}


def add_image(folder, name="x.jpg", dish=1):
    folder.mkdir(parents=True, exist_ok=True)
    draw_dish_image(dish, 99).save(folder / name)
    return name


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)


def prepare(root):
    return prepare_dataset(root, test_fraction=0.2, workers=1)


def test_all_three_json_forms_and_bom(raw_root):
    folder = raw_root / "forms"
    add_image(folder, "a.jpg")
    write(folder / "one.json", json.dumps({**GOOD, "image_path": "a.jpg"}, ensure_ascii=False))
    lines = [json.dumps({"title": "فسنجان", "response": f"پاراگراف {i} دربارهٔ فسنجان.", "image_path": "a.jpg"},
                        ensure_ascii=False) for i in range(2)]
    write(folder / "lines.json", "\n".join(lines) + "\n")
    write(folder / "bom.json", "\ufeff" + json.dumps([{**GOOD, "response": "فسنجان غذای شمالی است.",
                                                          "image_path": "a.jpg"}], ensure_ascii=False))
    out = prepare(raw_root)
    fesenjan = out.pairs[out.pairs.image_path == "forms/a.jpg"]
    assert len(fesenjan) == 4  # object + 2 lines + BOM list
    assert out.stats["skipped_total"] == 0


@pytest.mark.parametrize("suffix", [".jsonl", ".JSONL"])
def test_jsonl_files_are_read_in_all_three_forms(raw_root, suffix):
    folder = raw_root / "jsonl"
    add_image(folder, "a.jpg")
    record = {**GOOD, "image_path": "a.jpg"}
    lines = [json.dumps({**record, "response": f"پاراگراف {i} دربارهٔ فسنجان."}, ensure_ascii=False) for i in range(3)]
    write(folder / f"lines{suffix}", "\n".join(lines) + "\n")
    write(folder / f"one{suffix}", json.dumps({**record, "response": "یک شیء تنها."}, ensure_ascii=False))
    write(folder / f"list{suffix}", json.dumps([{**record, "response": "فهرستی از یک رکورد."}], ensure_ascii=False))
    out = prepare(raw_root)
    assert len(out.pairs[out.pairs.image_path == "jsonl/a.jpg"]) == 5
    assert out.stats["json_files"] == 4 + 3 and out.stats["skipped_total"] == 0


BAD_CASES = {
    "malformed_json_file": lambda d: write(d / "r.json", '{"title": "x", '),
    # The good line beside the broken one is an existing pair again: kept once, nothing new.
    "malformed_json_line": lambda d: write(d / "r.json", json.dumps(
        {"title": DISHES[0][0], "response": DISHES[0][1][0], "image_path": "../dish_00/images/00.jpg"},
        ensure_ascii=False) + '\n{"title": broken\n'),
    "non_utf8_file": lambda d: write(d / "r.json", json.dumps({**GOOD, "image_path": add_image(d)}, ensure_ascii=False),
                                     encoding="utf-16"),
    "not_an_object": lambda d: write(d / "r.json", json.dumps([["a", "b"], 3], ensure_ascii=False)),
    "missing_title": lambda d: write(d / "r.json", json.dumps([{**GOOD, "title": "  ", "image_path": add_image(d)}],
                                                               ensure_ascii=False)),
    "missing_response": lambda d: write(d / "r.json", json.dumps([{"title": "فسنجان", "image_path": add_image(d)}],
                                                                  ensure_ascii=False)),
    "image_missing": lambda d: write(d / "r.json", json.dumps([{**GOOD, "image_path": "nope.jpg"}], ensure_ascii=False)),
    "image_outside_root": lambda d: write(d / "r.json", json.dumps(
        [{**GOOD, "image_path": "../../outside.jpg"}, {**GOOD, "image_path": str(d.parent.parent / "outside.jpg")}],
        ensure_ascii=False)),
    "image_corrupt": lambda d: (write(d / "bad.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg"),
                                write(d / "r.json", json.dumps([{**GOOD, "image_path": "bad.jpg"}], ensure_ascii=False))),
}


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_bad_input_is_skipped_counted_and_kept_out(raw_root, reason):
    (raw_root.parent / "outside.jpg").write_bytes((raw_root / "dish_00/images/00.jpg").read_bytes())
    clean = prepare(raw_root)
    BAD_CASES[reason](raw_root / "bad")
    out = prepare(raw_root)
    assert out.stats["skipped"].get(reason, 0) >= 1, out.stats["skipped"]
    assert set(out.stats["skipped"]) == {reason}
    assert out.skips.to_frame()["source"].str.startswith("bad/").all()
    # Nothing from the bad folder leaks into the outputs.
    assert not out.pairs.image_path.str.startswith("bad/").any()
    assert passage_id_for(GOOD["response"]) not in set(out.docstore.id)
    pd.testing.assert_frame_equal(out.pairs, clean.pairs)


def test_truncated_image_skipped(raw_root):
    data = (raw_root / "dish_00/images/00.jpg").read_bytes()
    write(raw_root / "bad/t.jpg", data[: len(data) // 2])
    write(raw_root / "bad/r.json", json.dumps([{**GOOD, "image_path": "t.jpg"}], ensure_ascii=False))
    assert prepare(raw_root).stats["skipped"] == {"image_corrupt": 1}


def test_symlink_out_of_root_skipped(raw_root, tmp_path):
    secret = tmp_path / "secret.jpg"
    draw_dish_image(2, 5).save(secret)
    (raw_root / "bad").mkdir()
    os.symlink(secret, raw_root / "bad" / "link.jpg")
    write(raw_root / "bad/r.json", json.dumps([{**GOOD, "image_path": "link.jpg"}], ensure_ascii=False))
    assert prepare(raw_root).stats["skipped"] == {"image_outside_root": 1}


def test_decompression_bomb_refused_from_header(raw_root, monkeypatch):
    Image.new("1", (9000, 9000)).save(raw_root / "dish_00" / "bomb.png")  # 81 Mpx, tiny file
    write(raw_root / "dish_00/bomb.json", json.dumps([{**GOOD, "image_path": "bomb.png"}], ensure_ascii=False))
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    out = prepare(raw_root)
    assert out.stats["skipped"] == {"image_too_large": 1}
    assert (9000, 9000) not in decoded and len(decoded) == 16  # the 16 good images were decoded


def test_duplicate_pair_kept_once(raw_root):
    records = json.loads((raw_root / "dish_00/records.json").read_text(encoding="utf-8"))
    write(raw_root / "dish_00/again.json", json.dumps(records[:3], ensure_ascii=False))
    before = prepare(make_raw_dataset(raw_root.parent / "fresh"))
    out = prepare(raw_root)
    assert out.stats["duplicate_pairs"] == 3
    assert len(out.pairs) == len(before.pairs)
    assert not out.pairs.duplicated(["image_sha256", "passage_id"]).any()


def test_same_dish_in_two_folders_spelled_differently_is_one_food_id(raw_root):
    add_image(raw_root / "other", "q.jpg", dish=0)
    write(raw_root / "other/r.json", json.dumps([{"title": "قورمه\u200cسبزي", "response": "قورمه سبزي را با برنج مي‌خورند.",
                                                   "image_path": "q.jpg"}], ensure_ascii=False))
    out = prepare(raw_root)
    assert out.stats["dishes"] == 4
    assert out.pairs.loc[out.pairs.image_path == "other/q.jpg", "food_id"].item() == "قورمه سبزی"


def test_user_text_is_not_rewritten(raw_root):
    out = prepare(raw_root)
    original = json.loads((raw_root / "dish_01/records.json").read_text(encoding="utf-8"))[0]["response"]
    assert original in set(out.docstore.passage_text)


def test_missing_root_and_empty_root_are_one_line_errors(tmp_path):
    with pytest.raises(FaclipError, match="does not exist") as err:
        prepare(tmp_path / "nope")
    assert "\n" not in str(err.value)
    write(tmp_path / "empty/r.json", "[]")
    with pytest.raises(FaclipError, match="no valid"):
        prepare(tmp_path / "empty")


def test_split_every_dish_with_two_images_has_both():
    rows = [(f"{d:02d}{i:062d}", f"dish{d}") for d in range(10) for i in range(2)]
    split = split_images(pd.DataFrame(rows, columns=["image_sha256", "food_id"]), test_fraction=0.2)
    for d in range(10):
        assert {split[f"{d:02d}{i:062d}"] for i in range(2)} == {"train", "test"}


def test_split_stable_when_data_is_added(raw_root):
    before = prepare(raw_root).pairs.drop_duplicates("image_sha256").set_index("image_sha256").split
    add_image(raw_root / "dish_01/images", "new.jpg", dish=1)
    records = json.loads((raw_root / "dish_01/records.json").read_text(encoding="utf-8"))
    records.append({**records[0], "image_path": "images/new.jpg"})
    write(raw_root / "dish_01/records.json", json.dumps(records, ensure_ascii=False))
    make_raw_dataset(raw_root / "more", n_dishes=6)  # and whole new dishes
    after = prepare(raw_root).pairs.drop_duplicates("image_sha256").set_index("image_sha256").split
    assert len(after) > len(before)
    pd.testing.assert_series_equal(after[before.index], before)


def run_stage(root, out, cwd):
    (cwd / "params.yaml").write_text(f"data:\n  root: {root}\n", encoding="utf-8")
    cmd = [sys.executable, str(REPO / "stages/prepare.py"), "--docstore", str(out / "docstore.parquet"),
           "--pairs", str(out / "pairs.csv"), "--skips", str(out / "skips.csv"), "--metrics", str(out / "m.json")]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def test_stage_outputs_byte_identical_across_runs(raw_root, tmp_path):
    runs = []
    for name in ("a", "b"):
        result = run_stage(raw_root, tmp_path / name, tmp_path)
        assert result.returncode == 0, result.stderr
        runs.append({f: (tmp_path / name / f).read_bytes() for f in ("docstore.parquet", "pairs.csv", "m.json")})
    assert runs[0] == runs[1]
    docstore = pd.read_parquet(tmp_path / "a/docstore.parquet")
    assert list(docstore.columns) == ["id", "food_id", "title", "passage_text"]
    assert list(pd.read_csv(tmp_path / "a/pairs.csv").columns) == [
        "image_path", "image_sha256", "passage_id", "food_id", "split"]


def test_stage_error_is_one_line_exit_2(tmp_path):
    result = run_stage(tmp_path / "missing", tmp_path / "out", tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("faclip error")]
    assert len(errors) == 1 and "data.root" in errors[0]


@pytest.mark.e2e
def test_dvc_repro_prepare_on_the_sample(tmp_path):
    from repo_utils import copy_repo, dvc

    repo = copy_repo(tmp_path / "repo")
    result = dvc(repo, "repro", "prepare")
    assert "Running stage 'prepare'" in result.stdout
    stats = json.loads((repo / "metrics/prepare.json").read_text(encoding="utf-8"))
    assert stats["dishes"] == 24 and stats["skipped_total"] == 0 and stats["test_images"] > 0
    assert json.loads(dvc(repo, "status", "prepare", "--json").stdout or "{}") == {}
    assert "didn't change" in dvc(repo, "repro", "prepare").stdout
