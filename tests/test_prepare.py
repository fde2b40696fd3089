"""prepare: JSON forms, every bad-input case (skipped, counted, never in the outputs), determinism, split."""

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image, ImageFile

from conftest import DISHES, REPO, draw_dish_image, make_raw_dataset
from faclip.errors import FaclipError
from faclip.prepare import MAX_TITLE_CHARS, prepare_dataset, split_images
from faclip.text import food_id_for, passage_id_for

GOOD = {"title": "فسنجان", "response": "فسنجان با گردو و رب انار پخته می‌شود."}


def add_image(folder, name="x.jpg", dish=1):
    folder.mkdir(parents=True, exist_ok=True)
    draw_dish_image(dish, 99).save(folder / name)
    return name


def write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail, rather than hang the test run, when the body blocks (say, opening a FIFO)."""
    def hung(*_):
        raise TimeoutError(f"still running after {seconds} s: it hangs")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def prepare(root):
    with deadline(60):
        return prepare_dataset(root, test_fraction=0.2, workers=1)


def record(**fields):
    return json.dumps([{**GOOD, **fields}], ensure_ascii=False)


# Only spaces, ZWNJ, tatweel, diacritics, zero-width and bidi marks, a braille blank: nothing to read.
BLANK = " \u200c\u0640\u064e\u200b\u202b\u2066\u2800\ufeff "


def symlink(target, link):
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def outside_json(d):
    outside = d.parent.parent / "outside.json"
    outside.write_text(record(response="فسنجان از بیرون data.root آمده است.", image_path="x.jpg"), encoding="utf-8")
    add_image(d)
    symlink(outside, d / "r.json")


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
    # Text that is blank once normalised is missing, never a passage or a dish (food_id '').
    "missing_title/zwnj": lambda d: write(d / "r.json", record(title="\u200c\u200c", image_path=add_image(d))),
    "missing_title/invisible": lambda d: write(d / "r.json", record(title=BLANK, image_path=add_image(d))),
    "missing_response/invisible": lambda d: write(d / "r.json", record(response=BLANK, image_path=add_image(d))),
    "missing_response/diacritics": lambda d: write(d / "r.json", record(response="\u064e\u0650 \u0640",
                                                                        image_path=add_image(d))),
    "invalid_characters/nul_title": lambda d: write(d / "r.json", record(title="فسن\u0000جان", image_path=add_image(d))),
    "invalid_characters/nul_response": lambda d: write(d / "r.json", record(response=GOOD["response"] + "\u0000",
                                                                            image_path=add_image(d))),
    "invalid_characters/escape_in_path": lambda d: write(d / "r.json", record(image_path="x\u001b.jpg")),
    "invalid_characters/lone_surrogate": lambda d: write(d / "r.json", json.dumps(
        [{**GOOD, "response": "فسنجان \ud800", "image_path": add_image(d)}])),
    # A paragraph pasted as the title: never a dish (its food_id would be that paragraph).
    "title_too_long": lambda d: write(d / "r.json", record(title="فسنجان " * 40, image_path=add_image(d))),
    # One bad file is a skip: never a crash, a hang, or a read of something that never ends.
    "json_too_deep": lambda d: write(d / "r.json", "[" * 100_000),
    "json_too_deep/line": lambda d: write(d / "r.jsonl", json.dumps(
        {"title": DISHES[0][0], "response": DISHES[0][1][0], "image_path": "../dish_00/images/00.jpg"},
        ensure_ascii=False) + "\n" + "[" * 100_000 + "\n"),
    "malformed_json_file/huge_integer": lambda d: write(d / "r.json", '{"title": ' + "1" * 5000 + "}"),
    "json_unreadable/symlink_loop": lambda d: symlink("r.json", d / "r.json"),
    "json_not_a_file/fifo": lambda d: (d.mkdir(parents=True), os.mkfifo(d / "r.json")),
    "json_missing/dangling_symlink": lambda d: symlink("gone.json", d / "r.json"),
    "json_outside_root": outside_json,
    "image_unreadable/symlink_loop": lambda d: (symlink("loop.jpg", d / "loop.jpg"),
                                                write(d / "r.json", record(image_path="loop.jpg"))),
    "image_not_a_file/fifo": lambda d: (d.mkdir(parents=True), os.mkfifo(d / "x.jpg"),
                                        write(d / "r.json", record(image_path="x.jpg"))),
    "image_not_a_file/folder": lambda d: ((d / "x.jpg").mkdir(parents=True), write(d / "r.json", record(image_path="x.jpg"))),
    "image_extreme_aspect": lambda d: (d.mkdir(parents=True), Image.new("RGB", (30000, 1), (200, 40, 40)).save(d / "x.png"),
                                       write(d / "r.json", record(image_path="x.png"))),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_skipped_counted_and_kept_out(raw_root, case):
    reason = case.split("/")[0]
    (raw_root.parent / "outside.jpg").write_bytes((raw_root / "dish_00/images/00.jpg").read_bytes())
    clean = prepare(raw_root)
    BAD_CASES[case](raw_root / "bad")
    out = prepare(raw_root)
    assert out.stats["skipped"].get(reason, 0) >= 1, out.stats["skipped"]
    assert set(out.stats["skipped"]) == {reason}
    assert out.skips.to_frame()["source"].str.startswith("bad/").all()
    # Nothing from the bad folder leaks into the outputs.
    assert not out.pairs.image_path.str.startswith("bad/").any()
    assert passage_id_for(GOOD["response"]) not in set(out.docstore.id)
    pd.testing.assert_frame_equal(out.pairs, clean.pairs)
    pd.testing.assert_frame_equal(out.docstore, clean.docstore)


def test_several_blank_records_are_each_skipped_not_merged_as_duplicates(raw_root):
    d = raw_root / "bad"
    name = add_image(d)
    blanks = [" ", "\u200c", "\u0640\u0640", "\u200b\u200f", "\u064e"]
    write(d / "r.json", json.dumps([{**GOOD, "response": b, "image_path": name} for b in blanks], ensure_ascii=False))
    out = prepare(raw_root)
    assert out.stats["skipped"] == {"missing_response": len(blanks)}
    assert out.stats["duplicate_pairs"] == 0
    assert passage_id_for("") not in set(out.docstore.id) and "" not in set(out.docstore.food_id)


def test_files_over_the_size_limits_are_skipped_unread(raw_root, monkeypatch):
    import faclip.prepare

    big = raw_root / "big"
    big.mkdir()
    Image.effect_noise((256, 256), 64).save(big / "noise.png")  # ~60 KB; the other images are ~2 KB
    write(big / "r.json", record(image_path="noise.png") + " " * 4096)
    monkeypatch.setattr(faclip.prepare, "MAX_JSON_BYTES", 4096)
    assert prepare(raw_root).stats["skipped"] == {"json_too_large": 1}
    monkeypatch.setattr(faclip.prepare, "MAX_JSON_BYTES", 1 << 20)
    monkeypatch.setattr(faclip.prepare, "MAX_IMAGE_BYTES", 20_000)
    out = prepare(raw_root)
    assert out.stats["skipped"] == {"image_too_large": 1}
    assert out.skips.to_frame()["detail"].item().startswith("big/noise.png: ")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions, which root ignores")
def test_unreadable_folder_is_a_skip(raw_root):
    locked = raw_root / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        out = prepare(raw_root)
    finally:
        locked.chmod(0o755)
    assert out.stats["skipped"] == {"folder_unreadable": 1}
    assert out.skips.to_frame()["source"].tolist() == ["locked"]


def test_a_json_symlink_to_dev_zero_is_refused_unread(raw_root, tmp_path):
    symlink("/dev/zero", raw_root / "bad" / "zero.json")
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
    script = limit + ("from faclip.prepare import prepare_dataset; import json, sys; "
                      "print(json.dumps(prepare_dataset(sys.argv[1], 0.2, workers=1).stats['skipped']))")
    result = subprocess.run([sys.executable, "-c", script, str(raw_root)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"json_outside_root": 1}


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
    # A load() with tiles left is a decode; the calls after it (convert, transpose) decode nothing.
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: (self.tile and decoded.append(self.size)) or real_load(self))
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


def test_records_in_two_spellings_are_one_dish_and_one_passage(raw_root):
    """The same dish and passage copied from a PDF (presentation forms), typed with Latin digits and an Arabic
    keyboard (ك ي ۀ), with ZWNJ beside spaces: one food_id and one passage, the first spelling kept as written."""
    add_image(raw_root / "pdf", "a.jpg", dish=0)
    add_image(raw_root / "web", "b.jpg", dish=1)
    plain = {"title": "کله پاچه ۲ نفره", "response": "کلهٔ پاچه را با ۲ نان سنگک و لیمو می‌خورند."}
    write(raw_root / "pdf/r.json", json.dumps([{**plain, "image_path": "a.jpg"}], ensure_ascii=False))
    write(raw_root / "web/r.json", json.dumps([{"title": "ﮐﻠﮥ ﭘﺎﭼﻪ 2 نفره",
                                                "response": "كلۀ پاچه را با 2 نان سنگك و ليمو مي\u200c خورند.",
                                                "image_path": "b.jpg"}], ensure_ascii=False))
    before = prepare(make_raw_dataset(raw_root.parent / "fresh"))
    out = prepare(raw_root)
    assert out.stats["dishes"] == before.stats["dishes"] + 1
    assert out.stats["passages"] == before.stats["passages"] + 1
    new = out.pairs[out.pairs.image_path.isin(["pdf/a.jpg", "web/b.jpg"])]
    assert set(new.food_id) == {"کله پاچه ۲ نفره"} and set(new.passage_id) == {passage_id_for(plain["response"])}
    assert out.docstore.set_index("id").loc[passage_id_for(plain["response"]), "passage_text"] == plain["response"]


def test_a_title_over_the_bound_after_normalisation_is_a_named_skip(raw_root):
    d = raw_root / "long"
    name = add_image(d)
    at_bound = "ک" * MAX_TITLE_CHARS
    voweled = "کَ" * MAX_TITLE_CHARS  # 400 characters as written, 200 once the diacritics go: a name, kept
    titles = [at_bound, voweled, at_bound + "ک"]
    write(d / "r.json", json.dumps([{**GOOD, "title": t, "image_path": name} for t in titles], ensure_ascii=False))
    out = prepare(raw_root)
    assert out.stats["skipped"] == {"title_too_long": 1}
    skip = out.skips.to_frame().iloc[0]
    assert (skip["source"], skip["position"]) == ("long/r.json", "item 2")
    assert skip["detail"].startswith(f"{MAX_TITLE_CHARS + 1} characters after normalisation")
    assert food_id_for(at_bound) in set(out.pairs.food_id) and len(out.pairs[out.pairs.image_path == "long/x.jpg"]) == 1


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
    # A skip's detail never holds what differs from run to run (PIL names a BytesIO by its address).
    write(raw_root / "bad/not_an_image.jpg", b"neither JPEG nor PNG, just text")
    write(raw_root / "bad/r.json", record(image_path="not_an_image.jpg"))
    runs = []
    for name in ("a", "b"):
        result = run_stage(raw_root, tmp_path / name, tmp_path)
        assert result.returncode == 0, result.stderr
        runs.append({f: (tmp_path / name / f).read_bytes()
                     for f in ("docstore.parquet", "pairs.csv", "skips.csv", "m.json")})
    assert runs[0] == runs[1]
    assert b"image_corrupt" in runs[0]["skips.csv"] and b"0x" not in runs[0]["skips.csv"]
    docstore = pd.read_parquet(tmp_path / "a/docstore.parquet")
    assert list(docstore.columns) == ["id", "food_id", "title", "passage_text"]
    assert list(pd.read_csv(tmp_path / "a/pairs.csv").columns) == [
        "image_path", "image_sha256", "passage_id", "food_id", "split"]


def test_stage_on_a_full_disk_is_one_line_and_keeps_the_previous_outputs(raw_root, tmp_path, monkeypatch, capsys):
    import importlib.util

    from faclip.errors import run_main

    out = tmp_path / "out"
    assert run_stage(raw_root, out, tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    add_image(raw_root / "new")
    write(raw_root / "new/r.json", record(image_path="x.jpg"))  # this run's outputs would differ

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)  # the pairs: after the docstore was written
    spec = importlib.util.spec_from_file_location("stage_prepare", REPO / "stages/prepare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.chdir(tmp_path)
    args = ["--docstore", str(out / "docstore.parquet"), "--pairs", str(out / "pairs.csv"),
            "--skips", str(out / "skips.csv"), "--metrics", str(out / "m.json")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: stage.main(args))
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("faclip error")]
    assert len(err) == 1 and err[0].startswith("faclip error: no space left"), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no new docstore beside old pairs, no temps


def test_stage_error_is_one_line_exit_2(tmp_path):
    result = run_stage(tmp_path / "missing", tmp_path / "out", tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("faclip error")]
    assert len(errors) == 1 and "data.root" in errors[0]


@pytest.mark.e2e
def test_dvc_repro_prepare_on_the_sample(tmp_path):
    from repo_utils import copy_repo, dvc, dvc_status

    repo = copy_repo(tmp_path / "repo")
    result = dvc(repo, "repro", "prepare")
    assert "Running stage 'prepare'" in result.stdout
    stats = json.loads((repo / "metrics/prepare.json").read_text(encoding="utf-8"))
    assert stats["dishes"] == 24 and stats["skipped_total"] == 0 and stats["test_images"] > 0
    assert dvc_status(repo, "prepare") == {}
    assert "didn't change" in dvc(repo, "repro", "prepare").stdout
