"""The package's folders are its data flow: a stage imports only the stages before it.

model → diffusion → export → engines → runtime → {training, evaluation, bench, serve} → cli. Every import
counts, those inside functions too; the consumers of the runtime do not import each other, except that
evaluation scores with training's data and classifier. The modules at
the package root are placed by what they do: errors, device, artifacts and plotting serve every stage (and
import none but errors), info reads the model, build_cost sizes an export, build drives export and engines, __main__ is the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import flexidit_trt

PACKAGE = Path(flexidit_trt.__file__).parent
STAGES = {
    "errors": 0,
    "device": 0,
    "artifacts": 0,
    "plotting": 0,
    "model": 1,
    "default_model": 1.5,  # the embedded weights' file; at the root so the torch-free paths can name it
    "diffusion": 2,
    "info": 2.5,
    "export": 3,
    "engines": 4,
    "build_cost": 3.5,  # what a build will write: export's settings and the model's size
    "build": 4.5,
    "runtime": 5,
    "training": 6,
    "evaluation": 6,
    "bench": 6,
    "serve": 6,
    "cli": 7,
    "__main__": 7,
}
CONSUMER_IMPORTS = {("evaluation", "training")}  # it scores with training's data loader and classifier
MAX_LINES = 500


def _part(module: str) -> str:
    """The stage a dotted module name belongs to: its first component under the package."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> set[str]:
    """Every flexidit_trt module `path` imports, as dotted names (relative imports resolved)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1]  # a module's package, or an __init__'s own folder
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"{module}.{a.name}" for a in node.names] if not node.module else [module]
            found.update(n for n in names if n.startswith("flexidit_trt"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("flexidit_trt"))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_a_stage_imports_only_earlier_stages(path: Path) -> None:
    here = _part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    if here == "__init__":  # the package's lazy face
        return
    assert here in STAGES, f"{here!r} has no stage: place it in STAGES"
    wrong = []
    for target in _imports(path):
        there = _part(target)
        if there in (here, "_C") or there.startswith("__"):  # itself, the extension, the package's face
            continue
        assert there in STAGES, f"{_rel(path)} imports {target}, which has no stage"
        sibling = STAGES[there] == STAGES[here] == STAGES["bench"] and (here, there) not in CONSUMER_IMPORTS
        if STAGES[there] > STAGES[here] or sibling:
            wrong.append(target)
    assert not wrong, f"{_rel(path)} (stage {here}) imports a later stage or a sibling consumer: {wrong}"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_no_module_does_several_jobs_by_length(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_rel(path)} has {lines} lines (a module over {MAX_LINES} does several jobs)"


def test_the_checks_see_a_later_stage() -> None:
    """The scan resolves relative imports, so a runtime module reaching into the CLI would be seen."""
    runtime_run = PACKAGE / "runtime" / "run.py"
    assert any(_part(m) == "engines" for m in _imports(runtime_run))
    assert STAGES["cli"] > STAGES["runtime"] > STAGES["engines"]
