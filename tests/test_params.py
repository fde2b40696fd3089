import pytest
import yaml

from conftest import REPO
from faclip.errors import FaclipError
from faclip.params import load_params, parse_params


def test_repo_params_yaml_parses_with_training_keys_top_level():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert raw["epochs"] == params.train.epochs
    assert params.data.root == "data/sample" and params.model.text == "tiny"
    assert params.eval.k == (1, 5, 10)


@pytest.mark.parametrize("raw, key", [
    ({"epochs": -1}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"batch_size": 1}, "batch_size"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"warmup_steps": -3}, "warmup_steps"),
    ({"max_text_len": 4}, "max_text_len"),
    ({"positives": "dishes"}, "positives"),
    ({"positives": None}, "positives"),
    ({"data": {"test_fraction": 1.0}}, "data.test_fraction"),
    ({"data": {"root": ""}}, "data.root"),
    ({"model": {"text": ""}}, "model.text"),
    ({"index": {"factory": 3}}, "index.factory"),
    ({"index": {"max_memory_mb": 0}}, "index.max_memory_mb"),
    ({"index": {"recall_target": 1.5}}, "index.recall_target"),
    ({"index": {"nprobe": 0}}, "index.nprobe"),
    ({"index": {"efSearch": "deep"}}, "index.efSearch"),
    ({"embed": {"batch_size": 0}}, "embed.batch_size"),
    ({"embed": {"num_workers": "many"}}, "embed.num_workers"),
    ({"eval": {"k": []}}, "eval.k"),
    ({"eval": {"k": [0, 5]}}, "eval.k"),
    ({"epoch": 5}, "'epoch'"),
    ({"data": {"rot": "x"}}, "data.'rot'"),
])
def test_bad_values_are_one_line_errors_naming_the_key(raw, key):
    with pytest.raises(FaclipError) as err:
        parse_params(raw)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_params_are_frozen_and_eval_k_sorted():
    params = parse_params({"eval": {"k": [10, 1, 5, 5]}})
    assert params.eval.k == (1, 5, 10)
    with pytest.raises(AttributeError):
        params.train.epochs = 3


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(FaclipError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("epochs: [1\n", encoding="utf-8")
    with pytest.raises(FaclipError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
