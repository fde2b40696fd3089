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
    ({"data": {"rot": "x"}}, "'data.rot'"),
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


def write_yaml(tmp_path, text: str):
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("text, value", [("3e-05", 3e-05), ("5e-4", 5e-4), ("1E-3", 1e-3), ("0.00003", 3e-05)])
def test_numbers_are_read_as_dvc_reads_them(tmp_path, text, value):
    # YAML 1.2 (DVC's ruamel.yaml): 3e-05 is a number; YAML 1.1 (PyYAML) read it as the string '3e-05'.
    assert load_params(write_yaml(tmp_path, f"learning_rate: {text}\n")).train.learning_rate == value


@pytest.mark.parametrize("override, check", [
    ("learning_rate=0.00003", lambda p: p.train.learning_rate == 3e-05),
    ("epochs=5", lambda p: p.train.epochs == 5),
    ("index.factory=HNSW32", lambda p: p.index.factory == "HNSW32"),
    ("data.root=/data/persian food", lambda p: p.data.root == "/data/persian food"),
    ("learning_rate=5e-4", lambda p: p.train.learning_rate == 5e-4),
])
def test_every_set_param_form_the_readme_shows_means_what_dvc_means(tmp_path, override, check):
    """`dvc exp run -S ...` rewrites params.yaml with this very function; faclip must read back what DVC wrote."""
    from dvc.utils.hydra import apply_overrides

    path = write_yaml(tmp_path, (REPO / "params.yaml").read_text(encoding="utf-8"))
    apply_overrides(path, [override])
    assert check(load_params(path))


def test_dvc_refuses_a_set_param_typo_and_check_params_refuses_a_hand_typed_one(tmp_path):
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    path = write_yaml(tmp_path, (REPO / "params.yaml").read_text(encoding="utf-8"))
    with pytest.raises(InvalidArgumentError):
        apply_overrides(path, ["epoch=5"])
    write_yaml(tmp_path, path.read_text(encoding="utf-8") + "epoch: 5\n")
    with pytest.raises(FaclipError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        load_params(path)


@pytest.mark.parametrize("raw, message", [
    ({"epoch": 5}, "unknown key 'epoch' (did you mean 'epochs'?); the known top-level keys are batch_size, epochs"),
    ({"data": {"rooot": "x"}}, "unknown key 'data.rooot' (did you mean 'data.root'?); the known data keys are "
                                "data.root, data.test_fraction"),
    ({1: 2, "x": 3}, "unknown key '1'"),
])
def test_unknown_keys_name_the_nearest_known_key_and_all_known_ones(raw, message):
    with pytest.raises(FaclipError) as err:
        parse_params(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("a: 1\na: 2\n", "line 2: found duplicate key"),
    ("epochs: [1\n", "not valid YAML"),
    ("x: !!python/object:os.system y\n", "not valid YAML"),
])
def test_bad_yaml_is_one_line(tmp_path, text, message):
    with pytest.raises(FaclipError, match=message.replace("[", r"\[")) as err:
        load_params(write_yaml(tmp_path, text))
    assert "\n" not in str(err.value)


def test_an_empty_params_file_means_every_default(tmp_path):
    assert load_params(write_yaml(tmp_path, "# nothing set\n")) == parse_params({})
