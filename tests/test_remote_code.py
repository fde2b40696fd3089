"""No model folder runs code: a folder whose config names its own Python classes (`auto_map`) is refused
in one line by every loader (`base`, search, serve, train), and its module is never imported, even when
stdin answers transformers' "Do you wish to run the custom code?" with `y`."""

import io
import json
import shutil
import sys

from faclip.errors import FaclipError
from faclip.models import check_max_text_len, load_text_model, load_text_source, load_vision_model, load_vision_source

# Each case loads a hostile folder through one faclip entry point; a loader that raises FaclipError
# prints one line.
LOADERS = {
    "base_text": lambda path: load_text_source(path, lambda: ["x"]),
    "base_vision": load_vision_source,
    "text_model": load_text_model,
    "vision_model": load_vision_model,
    "max_text_len": lambda path: check_max_text_len(path, 16),
}


def outcome(call, path) -> str:
    try:
        call(path)
        return "loaded"
    except FaclipError as err:
        return "faclip error: " + str(err)
    except Exception as err:
        return "traceback: " + type(err).__name__


EVIL_MODULE = "open({marker!r}, 'w').write('ran')\n"


def hostile_copy(source, folder, marker, config_file: str, auto_map: dict, model_type: str | None = None):
    """A copy of a saved model folder whose `config_file` names classes in evil.py (writes `marker`)."""
    shutil.copytree(source, folder)
    config_path = folder / config_file
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config["auto_map"] = auto_map
    if model_type is not None:
        config["model_type"] = model_type
    config_path.write_text(json.dumps(config))
    (folder / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    return folder


def test_no_loader_runs_a_model_folders_code_even_when_stdin_says_yes(tmp_path, tiny_model_dirs, monkeypatch, capsys):
    text_dir, vision_dir = tiny_model_dirs
    markers, cases = {}, []

    def case(name, call, folder):
        cases.append((name, LOADERS[call], str(folder)))

    unknown_model = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    for call in ("base_text", "text_model", "max_text_len"):
        markers[call] = tmp_path / f"{call}.marker"
        case(call, call, hostile_copy(text_dir, tmp_path / call, markers[call], "config.json", unknown_model,
                                      model_type="evilnet"))
    markers["tokenizer"] = tmp_path / "tokenizer.marker"  # a known model, but a tokenizer of its own
    case("tokenizer", "text_model", hostile_copy(text_dir, tmp_path / "tokenizer", markers["tokenizer"],
                                                 "tokenizer_config.json",
                                                 {"AutoTokenizer": ["evil.EvilTokenizer", None]}))
    for call in ("base_vision", "vision_model"):
        markers[call] = tmp_path / f"{call}.marker"
        case(call, call, hostile_copy(vision_dir, tmp_path / call, markers[call], "config.json",
                                      {**unknown_model, "AutoImageProcessor": "evil.EvilProcessor"}, "evilnet"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))  # `y` to every question asked
    capsys.readouterr()
    outcomes = {name: outcome(call, path) for name, call, path in cases}
    printed = capsys.readouterr()
    assert [name for name, marker in markers.items() if marker.exists()] == []  # evil.py never imported
    for name in ("base_text", "text_model", "max_text_len"):
        message = outcomes[name]
        assert message.startswith("faclip error: ") and "\n" not in message, (name, message)
        assert "custom Python code" in message and "never runs a model folder's code" in message, message
        assert str(tmp_path / name) in message, message  # names the folder
    assert "Do you wish to run the custom code" not in printed.out + printed.err  # never asked
    # A tokenizer of a known model type loads with its library class; the vision loaders name
    # CLIPVisionModel itself, not an Auto class. Whatever they do, it is never a traceback.
    for name in ("tokenizer", "base_vision", "vision_model"):
        assert not outcomes[name].startswith("traceback"), (name, outcomes[name])
