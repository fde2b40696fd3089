"""Issue 11, hardening: damaged caches and manifests, memory bounds, the params gate, the code fingerprint.

Each test here failed on the code before the fix (a silent wrong answer, a traceback, a hang or an
unbounded allocation) and passes after it. The bad-data-folder cases live in test_prepare.py, the
reader and atomic writes in test_files.py, blank text in test_text.py, YAML in test_params.py, and
the DVC runs in test_hardening_dvc.py.
"""

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import REPO, make_raw_dataset
from test_embed import _pairs
from test_index import built  # noqa: F401 (a fixture)

from faclip.embed import embed_images, load_image_embeddings, save_image_embeddings
from faclip.encode import DECODE, encode_images, load_rgb, tokenize
from faclip.errors import FaclipError
from faclip.files import sha256_dir
from faclip.index import check_manifest
from faclip.models import load_text_model, load_vision_model


@pytest.fixture
def raw(tmp_path):
    return make_raw_dataset(tmp_path / "raw", n_dishes=3, images_per_dish=3)


def cache_folder(cache: Path, vision: Path) -> Path:
    return cache / f"{sha256_dir(vision)}-{DECODE}"


def flip_a_byte(path: Path, offset: int = -40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x7F
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "flipped_byte": lambda d: flip_a_byte(d / "embeddings.npy"),
    "truncated_vectors": lambda d: truncate(d / "embeddings.npy"),
    "shas_edited": lambda d: (d / "image_sha256.txt").write_text("0" * 64 + "\n"),
    "garbage_manifest": lambda d: (d / "manifest.json").write_bytes(b"\x00\xffnot json"),
    "empty_object_manifest": lambda d: (d / "manifest.json").write_text("{}"),
    "list_manifest": lambda d: (d / "manifest.json").write_text("[]"),
    "vectors_missing": lambda d: (d / "embeddings.npy").unlink(),
}


# --- the embedding cache and data/image_embeddings -----------------------------------------------


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_is_discarded_with_a_warning_and_rebuilt(raw, tmp_path, tiny_model_dirs, caplog, damage):
    vision = tiny_model_dirs[1]
    cache = tmp_path / "cache"
    first, _ = embed_images(_pairs(raw), raw, vision, cache)
    DAMAGE[damage](cache_folder(cache, vision))
    with caplog.at_level(logging.WARNING, logger="faclip.embed"):
        again, encoded = embed_images(_pairs(raw), raw, vision, cache)
    assert encoded == 9  # nothing damaged was reused (a flipped byte used to flow into training)
    assert np.array_equal(again.vectors, first.vectors) and again.image_sha256 == first.image_sha256
    assert "discarding the damaged embedding cache" in caplog.text
    load_image_embeddings(cache_folder(cache, vision))  # rewritten whole: it verifies again


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_image_embeddings_are_a_one_line_error(tmp_path, damage):
    from test_embed import _random_embeddings

    out = tmp_path / "image_embeddings"
    save_image_embeddings(out, _random_embeddings(n=50, dim=16))
    DAMAGE[damage](out)
    with pytest.raises(FaclipError, match="damaged|no image embeddings") as err:
        load_image_embeddings(out)
    assert "\n" not in str(err.value)
    if damage != "vectors_missing":
        assert "dvc checkout" in str(err.value) and "dvc repro -f embed" in str(err.value)


def test_the_manifest_records_each_files_sha256(tmp_path):
    from test_embed import _random_embeddings

    from faclip.files import sha256_file

    save_image_embeddings(tmp_path / "e", _random_embeddings())
    manifest = json.loads((tmp_path / "e/manifest.json").read_text())
    assert manifest["sha256"] == {name: sha256_file(tmp_path / "e" / name)
                                  for name in ("embeddings.npy", "image_sha256.txt")}


def test_an_interrupted_cache_write_leaves_nothing_in_the_cache_for_dvc_to_commit(raw, tmp_path, tiny_model_dirs):
    import multiprocessing

    from test_embed import _random_embeddings

    import faclip.embed as embed

    vision = tiny_model_dirs[1]
    cache = tmp_path / "cache"

    def killed_while_saving():  # runs in a forked copy of this process (faclip loaded already)
        def save(path, array, **kwargs):
            open(path, "wb").write(b"half an array")
            os.kill(os.getpid(), signal.SIGKILL)
        embed.np.save = save  # in the copy only
        embed.save_image_embeddings(cache_folder(cache, vision), _random_embeddings())

    # An embed run killed (SIGKILL: no cleanup runs) while it rewrites the cache folder.
    killed = multiprocessing.get_context("fork").Process(target=killed_while_saving)
    killed.start()
    killed.join(timeout=60)
    assert killed.exitcode == -signal.SIGKILL
    assert [p.name.endswith(".tmp") for p in cache.iterdir()] == [True]
    embed_images(_pairs(raw), raw, vision, cache)
    assert [p.name for p in cache.iterdir()] == [cache_folder(cache, vision).name]


# --- the index manifest ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["{}", "[]", "garbage", '"a string"', "null", '{"factory": "Flat", "dim": 32}',
                                  "\xff\xfe", "PASSAGE_IDS_SHORT"])
def test_a_damaged_index_manifest_is_one_line(built, text):  # noqa: F811 (the fixture)
    index_dir, model_dir, docstore_path = built
    path = index_dir / "manifest.json"
    if text == "PASSAGE_IDS_SHORT":
        manifest = json.loads(path.read_text())
        manifest["passage_ids"] = manifest["passage_ids"][:2]
        text = json.dumps(manifest)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(FaclipError, match="dvc repro index") as err:
        check_manifest(index_dir, model_dir, docstore_path)
    assert "\n" not in str(err.value)


# --- memory bounds: pixels, aspect, text length ------------------------------------------------


@pytest.fixture
def decoded(monkeypatch) -> list:
    """The sizes of the images PIL decodes (ImageFile.load), in order."""
    sizes = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: sizes.append(self.size) or real_load(self))
    return sizes


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(12000, 12000), (30000, 1), (1, 3000)])
def test_load_rgb_refuses_bombs_and_strips_from_the_header(tmp_path, decoded, size):
    path = tmp_path / "query.png"
    path.write_bytes(png(Image.new("1", size)))  # 12000x12000 is a ~140 KB file, 144 Mpx once decoded
    for source in (path, str(path), path.read_bytes()):
        with pytest.raises(FaclipError, match=r"\d+x\d+ pixels") as err:
            load_rgb(source)
        assert "\n" not in str(err.value)
    assert decoded == []  # refused before a single pixel was decoded


def test_encoding_a_strip_is_a_one_line_error_not_a_memory_error(tmp_path, tiny_model_dirs):
    (tmp_path / "strip.png").write_bytes(png(Image.new("RGB", (30000, 1))))
    model, processor = load_vision_model(tiny_model_dirs[1])
    with pytest.raises(FaclipError, match="more elongated than 20:1"):
        encode_images(model, processor, [tmp_path / "strip.png"])
    with pytest.raises(FaclipError, match="more elongated than 20:1"):
        encode_images(model, processor, [Image.new("RGB", (30000, 1))])  # a PIL image, as Retriever takes


class SpyTokenizer:
    """A tokenizer that records how long each text it is handed is."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.lengths += [len(t) for t in texts]
        return self.tokenizer(texts, **kwargs)


def test_a_huge_passage_is_cut_before_the_tokenizer_sees_it(tiny_model_dirs):
    _, tokenizer = load_text_model(tiny_model_dirs[0], device="cpu")
    spy = SpyTokenizer(tokenizer)
    huge = "قورمه سبزی خورشی با سبزی سرخ‌شده، لوبیا قرمز و گوشت است. " * 100_000  # ~6 MB
    ids = tokenize(spy, [huge], max_len=64)["input_ids"]
    assert max(spy.lengths) <= 64 * 64  # not 6 MB (a 50 MB passage took 77 s and 11 GB)
    # The cut changes nothing the model reads: the first max_len tokens are those of the whole text.
    page = huge[:20_000]
    whole = tokenizer([page], truncation=True, max_length=64, return_tensors="pt")["input_ids"]
    assert ids.tolist() == whole.tolist() == tokenize(tokenizer, [page], max_len=64)["input_ids"].tolist()


# --- train's checkpoint fingerprint hashes only what train executes ---------------------------------


def test_the_checkpoint_fingerprint_hashes_trains_import_closure_not_all_of_faclip(tiny_model_dirs, tmp_path,
                                                                                 monkeypatch):
    """Editing faclip/search.py (which no stage runs) must not throw away a half-finished training run."""
    import faclip.train
    from test_train import FAST

    from faclip.code import import_closure

    class Captured(Exception):
        pass

    def capture(*, code_files, **_):
        raise Captured(sorted(map(str, code_files)))

    monkeypatch.setattr(faclip.train, "fingerprint", capture)
    text_dir, vision_dir = tiny_model_dirs
    raw = make_raw_dataset(tmp_path / "raw", n_dishes=3, images_per_dish=4)
    from faclip.prepare import prepare_dataset

    prepared = prepare_dataset(raw, test_fraction=0.25, workers=1)
    prepared.docstore.to_parquet(tmp_path / "docstore.parquet", index=False)
    prepared.pairs.to_csv(tmp_path / "pairs.csv", index=False)
    embeddings, _ = embed_images(prepared.pairs, raw, vision_dir, tmp_path / "cache")
    save_image_embeddings(tmp_path / "emb", embeddings)
    with pytest.raises(Captured) as captured:
        faclip.train.train_text_encoder(text_dir=text_dir, docstore=tmp_path / "docstore.parquet",
                                        pairs=tmp_path / "pairs.csv", image_embeddings=tmp_path / "emb",
                                        checkpoints=tmp_path / "ck", live_dir=tmp_path / "live", params=FAST)
    code_files = captured.value.args[0]
    assert code_files == sorted(map(str, import_closure(Path(faclip.train.__file__))))
    assert str(REPO / "faclip/train.py") in code_files
    for unused in ("search.py", "__main__.py", "prepare.py", "evaluate.py"):
        assert str(REPO / "faclip" / unused) not in code_files, unused


# --- the check_params stage ------------------------------------------------------------------------


def with_line(params: str, key: str, line: str) -> str:
    """params.yaml's text with the top-level line `key: ...` replaced by `line` (whatever the defaults are)."""
    text, count = re.subn(rf"(?m)^{key}:.*$", line, params, count=1)
    assert count == 1, key
    return text


def check_params(cwd: Path, params: str, timeout: int = 60) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(params, encoding="utf-8")
    return subprocess.run([sys.executable, str(REPO / "stages/check_params.py"), "--out", "params.checked"],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("faclip error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_check_params_passes_valid_params_with_a_constant_output(raw, tmp_path):
    valid = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", str(raw))
    assert check_params(tmp_path, valid).returncode == 0
    first = (tmp_path / "params.checked").read_bytes()
    edited = with_line(with_line(valid, "epochs", "epochs: 3"), "learning_rate", "learning_rate: 3e-05")
    assert check_params(tmp_path, edited).returncode == 0
    assert (tmp_path / "params.checked").read_bytes() == first  # so no stage reruns because of it


@pytest.mark.parametrize("edit, named", [
    (("epochs", "epochs: 10\nepoch: 5"), "unknown key 'epoch' (did you mean 'epochs'?)"),
    (("  root", "  rooot: data/sample"), "unknown key 'data.rooot' (did you mean 'data.root'?)"),
    (("epochs", "epochs: -1"), "epochs=-1 is invalid"),
    (("learning_rate", "learning_rate: fast"), "learning_rate='fast' is invalid"),
    (("eval", "eval:\n  kk: 3"), "unknown key 'eval.kk' (did you mean 'eval.k'?)"),
])
def test_check_params_stops_on_any_bad_key_in_one_line(raw, tmp_path, edit, named):
    params = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", str(raw))
    error = one_error_line(check_params(tmp_path, with_line(params, *edit)))
    assert named in error, error
    assert not (tmp_path / "params.checked").exists()


def test_check_params_names_what_dvc_would_hang_on_under_data_root(raw, tmp_path):
    params = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", str(raw))
    os.mkfifo(raw / "dish_00" / "stream.json")
    os.symlink("/dev/zero", raw / "dish_01" / "zero.jpg")
    error = one_error_line(check_params(tmp_path, params, timeout=60))
    assert "2 entries that DVC cannot hash" in error and "stream.json (a FIFO (named pipe))" in error
    assert "zero.jpg (a character device)" in error and ".dvcignore" in error
    missing = one_error_line(check_params(tmp_path, params.replace(str(raw), str(tmp_path / "nowhere"))))
    assert "does not exist" in missing


def test_dvcignore_hides_an_entry_from_check_params_as_from_dvc(tmp_path):
    from repo_utils import raw_data_repo

    repo, raw = raw_data_repo(tmp_path, n_dishes=2, images_per_dish=2)
    os.mkfifo(raw / "dish_00" / "stream.json")
    params = (REPO / "params.yaml").read_text(encoding="utf-8").replace("data/sample", "raw")
    assert "stream.json" in one_error_line(check_params(repo, params))
    (repo / ".dvcignore").write_text("stream.json\n")
    assert check_params(repo, params).returncode == 0
