"""Issue 17, item 3: artifacts cannot silently lie.

A duplicate docstore id or a reordered `passage_ids` used to return other passages than the index
found, with no error; a damaged checkpoint stopped `train` with a traceback until someone deleted it;
garbage in faclip.json, the docstore, the pairs or the manifest's other fields was a traceback. Each
is now refused in one line naming the file and the fix, or (a checkpoint) ignored with a warning.
"""

import json
import logging
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch

from test_index import built  # noqa: F401 (a fixture)
from test_train import FAST, inputs, one_thread  # noqa: F401 (fixtures)

from faclip.errors import FaclipError
from faclip.index import check_manifest, passage_ids_sha256
from faclip.models import read_model_info, trained_max_len
from faclip.tables import check_unique_ids, load_docstore, load_pairs
from faclip.train import train_text_encoder


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def edit_manifest(index_dir, edit) -> None:
    path = index_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")


# --- the docstore and the index manifest -----------------------------------------------------------


def test_a_duplicate_docstore_id_is_refused_on_load(built):  # noqa: F811
    _, _, docstore_path = built
    docstore = pd.read_parquet(docstore_path)
    docstore.loc[3, "id"] = docstore.loc[1, "id"]
    docstore.to_parquet(docstore_path, index=False)
    with pytest.raises(FaclipError) as err:
        load_docstore(docstore_path)
    assert f"id '{docstore.loc[1, 'id']}' is on 2 rows" in one_line(err)
    assert "dvc repro prepare" in str(err.value) and f"dvc checkout {docstore_path}" in str(err.value)
    with pytest.raises(FaclipError, match="is on 2 rows"):
        check_unique_ids(["a", "b", "a"], "prepare's docstore")


def test_reordered_passage_ids_in_the_manifest_are_refused(built):  # noqa: F811
    index_dir, model_dir, docstore_path = built
    edit_manifest(index_dir, lambda m: m.update(passage_ids=m["passage_ids"][::-1]))
    with pytest.raises(FaclipError) as err:
        check_manifest(index_dir, model_dir, docstore_path)
    assert "do not match passage_ids_sha256" in one_line(err) and "dvc repro index" in str(err.value)


def test_reordered_passage_ids_with_their_hash_redone_are_still_refused(built):  # noqa: F811
    index_dir, model_dir, docstore_path = built

    def reorder(manifest):
        manifest["passage_ids"] = manifest["passage_ids"][::-1]
        manifest["passage_ids_sha256"] = passage_ids_sha256(manifest["passage_ids"])

    edit_manifest(index_dir, reorder)
    with pytest.raises(FaclipError, match="passage order is not the docstore's.*dvc repro index") as err:
        check_manifest(index_dir, model_dir, docstore_path)
    one_line(err)


def test_a_manifest_id_not_in_the_docstore_is_named(built):  # noqa: F811
    index_dir, model_dir, docstore_path = built

    def replace_one(manifest):
        manifest["passage_ids"][2] = "f" * 16
        manifest["passage_ids_sha256"] = passage_ids_sha256(manifest["passage_ids"])

    edit_manifest(index_dir, replace_one)
    with pytest.raises(FaclipError, match=f"passage {'f' * 16} is not in the docstore") as err:
        check_manifest(index_dir, model_dir, docstore_path)
    one_line(err)


def test_the_passage_ids_hash_is_of_the_ordered_list():
    assert passage_ids_sha256(["a", "b"]) == passage_ids_sha256(["a", "b"]) != passage_ids_sha256(["b", "a"])


@pytest.mark.parametrize("edit, named", [
    (lambda m: m.update(search_params=[1, 2]), "'search_params' missing or not a dict"),
    (lambda m: m.update(search_params={"nprobe": "8"}), "search_params nprobe='8'"),
    (lambda m: m.update(search_params={"efSearch": 0}), "search_params efSearch=0"),
    (lambda m: m.update(search_params={"ef_search": 16}), "search_params ef_search=16"),
    (lambda m: m.update(secret="x"), "unknown field 'secret'"),
    (lambda m: m.update(count=True), "'count' missing or not a int"),
    (lambda m: m.update(factory_reason=7), "'factory_reason' missing or not a str"),
    (lambda m: m.update({"recall_vs_exact@10": "1.0"}), "'recall_vs_exact@10' missing or not a number"),
    (lambda m: m.pop("passage_ids_sha256"), "'passage_ids_sha256' missing"),
    (lambda m: m["passage_ids"].__setitem__(0, None), "not all distinct strings"),
    (lambda m: m["passage_ids"].__setitem__(0, m["passage_ids"][1]), "not all distinct strings"),
])
def test_other_damaged_manifest_fields_are_one_line(built, edit, named):  # noqa: F811
    index_dir, model_dir, docstore_path = built
    edit_manifest(index_dir, edit)
    with pytest.raises(FaclipError) as err:
        check_manifest(index_dir, model_dir, docstore_path)
    assert named in one_line(err) and "dvc repro index" in str(err.value), str(err.value)


@pytest.mark.parametrize("column, value", [("passage_text", None), ("title", None), ("food_id", None),
                                           ("id", None), ("title", "")])
def test_a_null_or_non_text_docstore_cell_is_one_line(tmp_path, column, value):
    docstore = pd.DataFrame({"id": ["a1", "b2"], "food_id": ["x", "y"], "title": ["X", "Y"],
                             "passage_text": ["متن", "متن دو"]}).astype(object)
    docstore.loc[1, column] = value
    path = tmp_path / "docstore.parquet"
    docstore.to_parquet(path, index=False)
    with pytest.raises(FaclipError) as err:
        load_docstore(path)
    assert "row 1 (1 in all) has" in one_line(err) and f"for {column!r}, not a text" in str(err.value)
    assert "dvc repro prepare" in str(err.value)


@pytest.mark.parametrize("data", [b"garbage, not parquet", b"PAR1" + b"\x00" * 40 + b"PAR1", b""])
def test_a_garbage_docstore_is_one_line(tmp_path, data):
    path = tmp_path / "docstore.parquet"
    path.write_bytes(data)
    with pytest.raises(FaclipError) as err:
        load_docstore(path)
    assert "is damaged (it does not parse" in one_line(err) and f"dvc checkout {path}" in str(err.value)


PAIRS = "image_path,image_sha256,passage_id,food_id,split\na/1.jpg,{sha},p1,x,{split}\n"


@pytest.mark.parametrize("text, named", [
    (PAIRS.format(sha="a" * 64, split="validation"), "split 'validation' is neither train nor test"),
    (PAIRS.format(sha="not-a-sha", split="train"), "image_sha256 'not-a-sha' is not 64 hex digits"),
    (PAIRS.format(sha="a" * 64, split="train").replace(",p1,", ",,"), "has '' for 'passage_id'"),
    ('image_path,image_sha256\n"unclosed,\n', "it does not parse"),
    ("\x00\xff\xfe garbage", "lacks columns"),
])
def test_a_damaged_training_pairs_file_is_one_line(tmp_path, text, named):
    path = tmp_path / "pairs.csv"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    with pytest.raises(FaclipError) as err:
        load_pairs(path)
    assert named in one_line(err) and "dvc repro prepare" in str(err.value), str(err.value)


def test_valid_training_pairs_load(tmp_path):
    (tmp_path / "pairs.csv").write_text(PAIRS.format(sha="a" * 64, split="test").replace(",x,", ",NA,"))
    assert load_pairs(tmp_path / "pairs.csv")["food_id"].tolist() == ["NA"]


# --- faclip.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, named", [
    ("garbage", "not JSON"), ("[1, 2]", "a JSON list, not an object"), ('"x"', "a JSON str"),
    ('{"params": [1]}', "'params' is [1], not a dict"), ('{"vision_sha256": 5}', "'vision_sha256' is 5"),
    ('{"logit_scale": "2.6"}', "'logit_scale' is '2.6', not a number"), ('{"logit_scale": NaN}', "logit_scale is nan"),
    ('{"params": {"max_text_len": "64"}}', "params.max_text_len is '64'"), ("\xff", "not JSON"),
])
def test_a_damaged_faclip_json_is_one_line(tmp_path, text, named):
    (tmp_path / "faclip.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(FaclipError) as err:
        trained_max_len(tmp_path)
    assert named in one_line(err) and f"dvc checkout {tmp_path}" in str(err.value), str(err.value)
    assert read_model_info(tmp_path / "none") == {}  # a folder without one (saved by other tools) is fine


# --- checkpoints and a diverging loss ------------------------------------------------------------------


CHECKPOINT_DAMAGE = {
    "truncated_trainer_pt": lambda d: (d / "trainer.pt").write_bytes((d / "trainer.pt").read_bytes()[:100]),
    "trainer_pt_of_garbage": lambda d: (d / "trainer.pt").write_bytes(b"not a torch file"),
    "truncated_weights": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]),
    "state_not_json": lambda d: (d / "state.json").write_text("{not json"),
    "state_a_list": lambda d: (d / "state.json").write_text("[1, 2]"),
    "state_epoch_a_string": lambda d: (d / "state.json").write_text(json.dumps(
        {**json.loads((d / "state.json").read_text()), "epoch": "1"})),
    "trainer_pt_missing": lambda d: (d / "trainer.pt").unlink(),
    "weights_missing": lambda d: (d / "model.safetensors").unlink(),
}
ONE_EPOCH = replace(FAST, epochs=1)


@pytest.fixture(scope="module")
def one_epoch(inputs, tmp_path_factory):  # noqa: F811
    """A finished one-epoch run: its checkpoint (resumable by the same params) and its result."""
    run_dir = tmp_path_factory.mktemp("one_epoch")
    return run_dir, train_text_encoder(**inputs.kwargs(run_dir), params=ONE_EPOCH)


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_ignored_with_a_warning_and_training_starts_fresh(inputs, one_epoch, tmp_path,  # noqa: F811
                                                                                   caplog, damage):
    import shutil

    run_dir, finished = one_epoch
    shutil.copytree(run_dir / "checkpoints", tmp_path / "checkpoints")
    CHECKPOINT_DAMAGE[damage](tmp_path / "checkpoints/last")
    caplog.set_level(logging.INFO, logger="faclip.checkpoint")
    result = train_text_encoder(**inputs.kwargs(tmp_path), params=ONE_EPOCH)
    assert "ignoring the damaged checkpoint" in caplog.text and "starting fresh" in caplog.text
    assert result.metrics == finished.metrics  # trained afresh, as the first run did (seeded)
    for name, tensor in finished.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[name], tensor), name
    state = json.loads((tmp_path / "checkpoints/last/state.json").read_text())
    assert state["epoch"] == 1  # the damaged checkpoint was replaced by a good one


def test_an_intact_checkpoint_still_resumes(inputs, one_epoch, tmp_path, caplog):  # noqa: F811
    import shutil

    run_dir, finished = one_epoch
    shutil.copytree(run_dir / "checkpoints", tmp_path / "checkpoints")
    caplog.set_level(logging.INFO, logger="faclip.checkpoint")
    result = train_text_encoder(**inputs.kwargs(tmp_path), params=ONE_EPOCH)
    assert "resuming from the checkpoint" in caplog.text and "damaged" not in caplog.text
    assert result.metrics == finished.metrics


def test_a_non_finite_loss_stops_training_in_one_line(inputs, tmp_path, monkeypatch):  # noqa: F811
    import faclip.loss
    import faclip.train

    calls = []

    def diverging_loss(*args):  # the 3rd step's loss is NaN, as a too-large learning rate makes it
        calls.append(1)
        loss = faclip.loss.contrastive_loss(*args)
        return loss * math.nan if len(calls) == 3 else loss

    monkeypatch.setattr(faclip.train, "contrastive_loss", diverging_loss)
    with pytest.raises(FaclipError) as err:
        train_text_encoder(**inputs.kwargs(tmp_path), params=FAST)
    assert "the training loss became nan at step 3 (epoch 1" in one_line(err) and "lower learning_rate" in str(err.value)
    assert not (tmp_path / "checkpoints/last").exists()  # stopped within the first epoch: nothing saved


# --- the image embeddings store ----------------------------------------------------------------------


def test_image_embeddings_with_non_finite_values_or_a_boolean_count_are_damaged(tmp_path):
    import numpy as np

    from faclip.embed import DamagedEmbeddings, ImageEmbeddings, load_image_embeddings, save_image_embeddings
    from faclip.files import sha256_file

    vectors = np.eye(2, 4, dtype=np.float32)
    vectors[1, 2] = np.nan  # as a diverged vision model (or a hand edit with the sha256 redone) leaves it
    save_image_embeddings(tmp_path / "nan", ImageEmbeddings(["a" * 64, "b" * 64], vectors, "v"))
    with pytest.raises(DamagedEmbeddings, match="NaN or infinite.*dvc checkout") as err:
        load_image_embeddings(tmp_path / "nan")
    one_line(err)
    save_image_embeddings(tmp_path / "one", ImageEmbeddings(["a" * 64], np.eye(1, 4, dtype=np.float32), "v"))
    manifest = json.loads((tmp_path / "one/manifest.json").read_text())
    (tmp_path / "one/manifest.json").write_text(json.dumps({**manifest, "count": True}))
    assert sha256_file(tmp_path / "one/embeddings.npy") == manifest["sha256"]["embeddings.npy"]
    with pytest.raises(DamagedEmbeddings, match="lacks count"):
        load_image_embeddings(tmp_path / "one")


def test_a_manifest_whose_count_or_dim_is_not_the_index_files_is_refused(built):  # noqa: F811
    from faclip.index import load_index

    index_dir, model_dir, docstore_path = built
    edit_manifest(index_dir, lambda m: m.update(dim=m["dim"] * 2))
    with pytest.raises(FaclipError, match="the index holds 5 of dim 32.*dvc repro index") as err:
        load_index(index_dir, model_dir, docstore_path)
    one_line(err)
