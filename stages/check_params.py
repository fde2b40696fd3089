"""check_params: validate every key of params.yaml, that DVC can hash data.root, that `base` can load
model.text and model.vision, and that a given FAISS factory builds, before any stage runs.

DVC deletes a stage's outputs before it runs the stage, so a bad value found inside a stage has already
cost that stage's last good outputs. This stage depends on the whole of params.yaml, so it runs first
whenever any key changes, and every other stage depends on its output: a bad value or an unknown key
(a typo such as `epoch: 5`) stops `dvc repro` here, in one line, before any output is deleted. The
output's content never changes while params are valid, so a good edit still reruns only the stages
that read the edited key.

Output: --out, a one-line file whose content is constant.
"""

import argparse
import json
import logging
import os
import shlex
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.utils import validate_repo_id

from faclip.errors import FaclipError, run_main
from faclip.files import (NON_UTF8_FIX, NON_UTF8_NAME, RefusedFile, escaped_path, read_regular_file,
                          unhashable_entries, write_text)
from faclip.index import AUTO, check_factory
from faclip.params import TINY, TINY_WIDTH, ModelParams, load_params, position_limit, shown
from faclip.prepare import LAYOUT_HINT, find_json_files

logger = logging.getLogger("stages.check_params")

PASSED = "check_params passed: every key in params.yaml is known and valid, and DVC can hash data.root\n"
SHOWN = 3
# What from_pretrained loads weights from (one file, or the index of a sharded set).
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
MODEL_FIX = "use 'tiny', a local folder holding a save_pretrained model, or a Hugging Face hub id"
MAX_CONFIG_BYTES = 1 << 20  # a model's config.json (CLIPfa's: 1 KB)


def _not_ignored_by_dvc(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The entries `.dvcignore` does not hide from DVC (it applies only inside the repository)."""
    try:
        from dvc.repo import Repo

        with Repo(os.getcwd()) as repo:
            return [(path, what) for path, what in entries
                    if not repo.dvcignore.is_ignored(repo.fs, os.path.abspath(path))]
    except Exception:  # not in a DVC repo, or dvc missing (run by hand): nothing is ignored
        return entries


def check_data_root(root: Path) -> None:
    """data.root is a folder with nothing in it that DVC's hashing hangs or fails on (a FIFO, a device,
    a dangling or looping symlink...): DVC hashes the folder before `prepare` runs, where faclip could
    not stop it. It holds a JSON file (whether its records are valid is `prepare`'s to say)."""
    if not root.is_dir():
        raise FaclipError(f"data.root={shown(str(root))} does not exist or is not a folder; set data.root in "
                          f"params.yaml to your folder of JSON files and images, e.g. data/sample")
    bad = unhashable_entries(root)
    if bad:
        bad = _not_ignored_by_dvc(bad)
    if bad:
        listed = "; ".join(f"{escaped_path(path)} ({what})" for path, what in bad[:SHOWN]) + \
            (f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
        rename = f"; {NON_UTF8_FIX.replace('<folder>', shlex.quote(str(root)))}" \
            if any(what == NON_UTF8_NAME for _, what in bad) else ""
        raise FaclipError(f"data.root holds {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} that DVC cannot hash "
                          f"(it would hang or fail on them): {listed}; remove them, or (inside the repository) "
                          f"list them in .dvcignore{rename}")
    if not find_json_files(root):  # `prepare` would find no record, after DVC deleted its outputs
        raise FaclipError(f"data.root={shown(str(root))} holds no JSON file (*.json, *.jsonl); {LAYOUT_HINT}")


def _hub_folder(key: str, source: str) -> Path:
    """The snapshot folder of hub id `source` in the local cache, holding its config.json: offline
    (HF_HUB_OFFLINE=1) it must be cached, online config.json is fetched (`base` downloads the rest)."""
    try:
        validate_repo_id(source)
    except ValueError:
        raise FaclipError(f"{key}={shown(source)} is neither a local folder nor a well-formed Hugging Face hub id "
                          f"(org/name, letters, digits, '-', '_', '.'); {MODEL_FIX}") from None
    try:
        return Path(hf_hub_download(source, "config.json")).parent
    except (OSError, ValueError) as err:  # not cached (offline), no such repo, gated, no network...
        if constants.HF_HUB_OFFLINE:
            raise FaclipError(f"{key}={shown(source)} is not in the local Hugging Face cache (HF_HUB_OFFLINE=1); "
                              f"download it once online, or {MODEL_FIX}") from None
        reason = (str(err).strip().split(". ")[0].splitlines() or [type(err).__name__])[0][:160]
        raise FaclipError(f"{key}={shown(source)}: cannot fetch it from the Hugging Face hub ({reason}); "
                          f"{MODEL_FIX}") from None


def model_config(key: str, source: str) -> dict | None:
    """The config.json of what model.text / model.vision names, once it is known `base` can load it: a local
    folder holding config.json and weights, or a well-formed hub id that offline is cached with its weights.
    None for 'tiny'."""
    if source == TINY:
        return None
    if Path(source).is_dir() or source.startswith((".", "/", "~")):  # as `base` tells a folder from a hub id
        folder, where, has_weights = Path(source), "the local folder", True
        if not folder.is_dir():
            raise FaclipError(f"{key}={shown(source)}: there is no folder at that path; {MODEL_FIX}")
    else:  # online, `base` downloads the weights
        folder, where, has_weights = _hub_folder(key, source), "the cached snapshot", constants.HF_HUB_OFFLINE
    if not (folder / "config.json").is_file():
        raise FaclipError(f"{key}={shown(source)}: {where} holds no config.json; {MODEL_FIX}")
    if has_weights and not any((folder / name).is_file() for name in WEIGHTS):
        raise FaclipError(f"{key}={shown(source)}: {where} holds no model weights ({', '.join(WEIGHTS)}); "
                          f"{MODEL_FIX}")
    try:
        config = json.loads(read_regular_file(folder / "config.json", None, MAX_CONFIG_BYTES))
    except (RefusedFile, ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = err.detail if isinstance(err, RefusedFile) else f"not JSON: {type(err).__name__}"
        raise FaclipError(f"{key}={shown(source)}: its config.json cannot be read ({reason}); {MODEL_FIX}") from None
    if not isinstance(config, dict):
        raise FaclipError(f"{key}={shown(source)}: its config.json is not a JSON object; {MODEL_FIX}")
    return config


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def model_width(config: dict | None, key: str) -> int | None:
    """The width of the vectors faclip encodes with the model (its pooled output: hidden_size, of a full CLIP
    config's vision_config for a vision model), or None when the config does not say."""
    if config is None:
        return TINY_WIDTH
    if key == "model.vision" and isinstance(config.get("vision_config"), dict):
        config = config["vision_config"]
    return config["hidden_size"] if _whole(config.get("hidden_size")) else None


def check_models(model: ModelParams, max_text_len: int) -> None:
    """`base` can load both models, they output vectors of one width, and max_text_len fits the text model's
    position table: else `base` or `train` would refuse them, after DVC deleted their outputs."""
    text, vision = model_config("model.text", model.text), model_config("model.vision", model.vision)
    widths = model_width(text, "model.text"), model_width(vision, "model.vision")
    if None not in widths and widths[0] != widths[1]:
        raise FaclipError(f"model.text={shown(model.text)} outputs {widths[0]}-d vectors but model.vision="
                          f"{shown(model.vision)} outputs {widths[1]}-d; pick a text/vision pair of one width")
    if text is not None and _whole(text.get("max_position_embeddings")):
        limit = position_limit(SimpleNamespace(max_position_embeddings=text["max_position_embeddings"],
                                               model_type=text.get("model_type")))
        if max_text_len > limit:
            raise FaclipError(f"params.yaml: max_text_len={max_text_len} is too long for model.text="
                              f"{shown(model.text)}; use at most {limit}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    params = load_params()  # every key: unknown ones and bad values are one-line errors
    check_data_root(Path(params.data.root))
    check_models(params.model, params.train.max_text_len)
    if params.index.factory != AUTO:  # auto builds only factories faclip knows; a given one may crash FAISS
        check_factory(params.index.factory, params.index.nprobe, params.index.efSearch)
    write_text(args.out, PASSED)
    logger.info("params.yaml is valid and data.root can be hashed")


if __name__ == "__main__":
    run_main(main)
