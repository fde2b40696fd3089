"""Base models: the tiny pair is deterministic and round-trips by path; local folders take the hub path."""

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import DISHES, REPO, dishes_corpus, draw_dish_image
from transformers import (AutoModel, AutoTokenizer, CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel,
                          RobertaConfig, RobertaModel)

import faclip.models as models
from faclip.encode import encode_images, encode_texts
from faclip.errors import FaclipError
from faclip.files import sha256_dir
from faclip.text import ZWNJ

TEXT = f"قورمه سبزی با لوبیا قرمز می{ZWNJ}خورند"


def _no_corpus():
    raise AssertionError("the docstore corpus must only be read for a tiny text model")


def test_tiny_build_is_byte_identical(tmp_path, tiny_model_dirs):
    text_dir, vision_dir = tiny_model_dirs
    models.materialise_base("tiny", "tiny", dishes_corpus, tmp_path / "text", tmp_path / "vision")
    assert sha256_dir(tmp_path / "text") == sha256_dir(text_dir)
    assert sha256_dir(tmp_path / "vision") == sha256_dir(vision_dir)


def test_tiny_models_round_trip_by_path(tiny_model_dirs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text_dir, vision_dir = tiny_model_dirs
    for folder, kind in ((text_dir, "text"), (vision_dir, "vision")):
        assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
        assert json.loads((folder / "faclip.json").read_text()) == {"source": "tiny", "kind": kind, "dim": 128}

    # Plain transformers reads the folders (no faclip code), and the weights are the built ones.
    torch.manual_seed(123)  # whatever the global RNG holds, a tiny build seeds its own
    built_vision, processor = models.build_tiny_vision()
    torch.rand(7)
    built_text, _ = models.build_tiny_text(dishes_corpus())
    text_model = AutoModel.from_pretrained(text_dir)
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    vision_model = CLIPVisionModel.from_pretrained(vision_dir)
    assert isinstance(text_model, RobertaModel) and tokenizer.model_max_length == 512
    for built, loaded in ((built_text, text_model), (built_vision, vision_model)):
        loaded_state = loaded.state_dict()
        assert all(torch.equal(v, loaded_state[k]) for k, v in built.state_dict().items())

    loaded_vision, loaded_processor = models.load_vision_model(vision_dir)
    image = draw_dish_image(0, 0)
    assert np.array_equal(encode_images(loaded_vision, loaded_processor, [image]),
                          encode_images(built_vision, processor, [image]))
    assert loaded_processor.crop_size == {"height": 64, "width": 64}


def test_tiny_tokenizer_reads_persian_and_keeps_zwnj(tiny_model_dirs):
    _, tokenizer = models.load_text_model(tiny_model_dirs[0])
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids and len(ids) > 4
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT  # ZWNJ survives the round trip
    assert tokenizer(TEXT.replace(ZWNJ, " "))["input_ids"] != ids
    # Trained merges: known words take far fewer tokens than their bytes.
    assert len(ids) < len(TEXT.encode("utf-8")) / 2


def _save_real_like(tmp_path, text_width=128):
    """Folders as a hub download leaves them: save_pretrained of a RobertaModel and a CLIPVisionModel."""
    tokenizer = models.build_tiny_tokenizer(dishes_corpus())
    torch.manual_seed(1)
    text = RobertaModel(RobertaConfig(vocab_size=len(tokenizer), hidden_size=text_width, num_hidden_layers=1,
                                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=66,
                                      pad_token_id=tokenizer.pad_token_id))
    vision = CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=128, num_hidden_layers=1,
                                              num_attention_heads=4, intermediate_size=64))
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    text.save_pretrained(tmp_path / "hub_text")
    tokenizer.save_pretrained(tmp_path / "hub_text")
    vision.save_pretrained(tmp_path / "hub_vision")
    processor.save_pretrained(tmp_path / "hub_vision")
    return str(tmp_path / "hub_text"), str(tmp_path / "hub_vision"), text, vision


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Spy on every from_pretrained faclip.models makes: a list of (loader, source string)."""
    calls = []
    for name in ("AutoModel", "AutoTokenizer", "CLIPVisionModel", "CLIPImageProcessorPil"):
        real = getattr(models, name).from_pretrained

        def spy(source, *args, _real=real, _name=name, **kwargs):
            calls.append((_name, source))
            return _real(source, *args, **kwargs)
        monkeypatch.setattr(getattr(models, name), "from_pretrained", spy)
    return calls


def test_local_folder_goes_through_the_hub_id_path(tmp_path, from_pretrained_calls):
    text_src, vision_src, text, vision = _save_real_like(tmp_path)
    models.materialise_base(text_src, vision_src, _no_corpus, tmp_path / "out_text", tmp_path / "out_vision")
    assert from_pretrained_calls == [("AutoModel", text_src), ("AutoTokenizer", text_src),
                                     ("CLIPVisionModel", vision_src), ("CLIPImageProcessorPil", vision_src)]
    assert json.loads((tmp_path / "out_text" / "faclip.json").read_text())["source"] == text_src
    loaded_text, _ = models.load_text_model(tmp_path / "out_text")
    loaded_vision, _ = models.load_vision_model(tmp_path / "out_vision")
    assert all(torch.equal(v, loaded_text.state_dict()[k]) for k, v in text.state_dict().items())
    assert all(torch.equal(v, loaded_vision.state_dict()[k]) for k, v in vision.state_dict().items())


def test_hub_id_offline_is_one_line_error(tmp_path, from_pretrained_calls, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FaclipError, match="hub.*local folder") as err:
        models.materialise_base("nobody-faclip/no-such-model", "tiny", _no_corpus,
                                tmp_path / "text", tmp_path / "vision")
    assert "\n" not in str(err.value) and "model.text" in str(err.value)
    assert from_pretrained_calls == [("AutoModel", "nobody-faclip/no-such-model")]  # the same loader as a folder
    assert not (tmp_path / "text").exists()


def test_width_mismatch_is_one_line_error(tmp_path):
    text_src, _, _, _ = _save_real_like(tmp_path, text_width=64)
    with pytest.raises(FaclipError, match="64-d.*128-d") as err:
        models.materialise_base(text_src, "tiny", _no_corpus, tmp_path / "text", tmp_path / "vision")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "text").exists() and not (tmp_path / "vision").exists()


def test_empty_corpus_is_an_error():
    with pytest.raises(FaclipError, match="corpus"):
        models.build_tiny_text(["", "  "])


def _load_stage(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_base_stage_builds_tiny_from_docstore(tmp_path, monkeypatch, tiny_model_dirs):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": {"text": "tiny", "vision": "tiny"}}))
    pairs = [(title, passage) for title, passages in DISHES for passage in passages]
    rows = [{"id": f"{i:016x}", "food_id": title, "title": title, "passage_text": passage}
            for i, (title, passage) in enumerate(pairs)]
    pd.DataFrame(rows).to_parquet(tmp_path / "docstore.parquet")
    _load_stage("base").main(["--docstore", "docstore.parquet", "--text-out", "m/text", "--vision-out", "m/vision"])
    # Same corpus (titles + passages) -> the same tokenizer and model as the fixture's.
    assert sha256_dir(tmp_path / "m" / "vision") == sha256_dir(tiny_model_dirs[1])
    text_model, tokenizer = models.load_text_model(tmp_path / "m" / "text")
    assert tokenizer.unk_token_id not in tokenizer(TEXT)["input_ids"]
    assert encode_texts(text_model, tokenizer, [TEXT], max_len=32).shape == (1, 128)
