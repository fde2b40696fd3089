"""Which faclip source files a script executes: its import closure, read with `ast` (nothing is imported).

Used for `train`'s checkpoint fingerprint (a code change must not resume an old run) and by the test
that keeps every stage's `deps` in dvc.yaml equal to the files its script runs.
"""

import ast
from pathlib import Path

PACKAGE = "faclip"
PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """faclip.x -> faclip/x.py (or a subpackage's __init__.py); None for anything outside the package."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(tree: ast.AST, module: str) -> set[str]:
    """Module names a file imports anywhere (top level or inside functions), relative ones made absolute."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from faclip import x` imports x
    return names


def import_closure(script: str | Path) -> list[Path]:
    """`script` plus every faclip module it imports, directly or through another, with each package __init__."""
    script = Path(script).resolve()
    seen, todo = {script: ""}, [script]
    while todo:
        file = todo.pop()
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for name in _imported_modules(tree, seen[file]):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__.py, a/b/__init__.py, then c.
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                target = _module_file(prefix)
                if target is not None and target not in seen:
                    seen[target] = prefix
                    todo.append(target)
    return sorted(seen)
