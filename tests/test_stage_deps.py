"""dvc.yaml's code deps are exactly the Python files each stage's script executes, so `dvc status` is truthful.

The closure is computed here with `ast`, independently of `faclip.code` (which train's checkpoint
fingerprint uses); a second test checks the two agree.
"""

import ast
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from faclip.code import import_closure

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def stage_script(cmd: str) -> str:
    """The script a stage's `cmd` runs with python (`python stages/x.py ...`)."""
    words = shlex.split(" ".join(cmd.split()))
    return next(word for word in words if word.endswith(".py"))


def imported_faclip_files(file: Path) -> set[Path]:
    """faclip files one source file imports anywhere in it, each with the package __init__.py."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] != "faclip":
                continue
            found.add(REPO / "faclip/__init__.py")
            module = REPO.joinpath(*name.split(".")).with_suffix(".py")
            if module.is_file():
                found.add(module)
    return found


def closure(script: Path) -> set[str]:
    seen, todo = {script}, [script]
    while todo:
        for file in imported_faclip_files(todo.pop()) - seen:
            seen.add(file)
            todo.append(file)
    return {file.relative_to(REPO).as_posix() for file in seen}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_exactly_the_files_the_stage_executes(stage):
    spec = STAGES[stage]
    script = stage_script(spec["cmd"])
    declared = {dep for dep in spec["deps"] if isinstance(dep, str) and dep.endswith(".py")}
    executed = closure(REPO / script)
    missing, extra = sorted(executed - declared), sorted(declared - executed)
    assert not missing, f"stage {stage}: {script} executes {missing[0]} but dvc.yaml's deps lack it (add it)"
    assert not extra, f"stage {stage}: dvc.yaml lists {extra[0]} but {script} never imports it (remove it)"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_faclip_code_closure_agrees(stage):
    script = REPO / stage_script(STAGES[stage]["cmd"])
    assert {p.relative_to(REPO).as_posix() for p in import_closure(script)} == closure(script)


def test_closure_follows_imports_inside_functions_and_through_other_modules(tmp_path, monkeypatch):
    import faclip.code

    package = tmp_path / "faclip"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from faclip import b\n")
    (package / "b.py").write_text("def f():\n    import faclip.c\n")
    (package / "c.py").write_text("import json\n")
    (package / "unused.py").write_text("")
    script = tmp_path / "stage.py"
    script.write_text("from faclip.a import x\n")
    monkeypatch.setattr(faclip.code, "PACKAGE_DIR", package)
    got = {p.relative_to(tmp_path).as_posix() for p in faclip.code.import_closure(script)}
    assert got == {"stage.py", "faclip/__init__.py", "faclip/a.py", "faclip/b.py", "faclip/c.py"}
