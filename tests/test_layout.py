"""The package's layers: the core imports no family and no tool; a family imports only the core, never another
family; and every ``python -m open_clip_elip.<tool>`` the docs show still runs."""
import ast
import runpy
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "open_clip_elip"
TOOLS = ("demo", "study", "bench", "shards", "visualize", "leak", "results", "scenes", "gpu_check", "patches",
         "steering")


def our_imports(path: Path) -> set:
    """The ``open_clip_elip`` modules a file imports, as dotted names below the package."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(parts[:-1])  # what a level-1 relative import names, for a module and for an __init__ alike
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:
                    names = [".".join(base + [alias.name]) for alias in node.names]
            elif (node.module or "").startswith("open_clip_elip"):
                names = [node.module.removeprefix("open_clip_elip").lstrip(".")]
            else:
                continue
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("open_clip_elip").lstrip(".") for a in node.names
                         if a.name.startswith("open_clip_elip"))
    return found


def layer(module: str) -> str:
    top = module.split(".")[0]
    return top if top in ("core", "families") else "tools"


def test_core_and_families_import_only_what_their_layer_may():
    for path in PACKAGE.rglob("*.py"):
        here = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        imported = our_imports(path)
        if here.startswith("core"):
            assert {layer(m) for m in imported} <= {"core"}, (here, imported)
        elif here.startswith("families.") and here != "families.__init__":
            family = here.split(".")[1]
            for module in imported:
                assert layer(module) == "core" or module.startswith(f"families.{family}"), (here, module)
    assert our_imports(PACKAGE / "families" / "evit.py") == {"core.attention", "core.costs", "core.openclip",
                                                             "core.options",
                                                             "core.reduce", "core.registration", "core.registry",
                                                             "core.towers"}


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy on an imported module
@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_runs_as_a_module(tool, capsys, monkeypatch):
    """``python -m open_clip_elip.<tool> --help``, as runpy runs it (in this process: no second start-up)."""
    monkeypatch.setattr(sys, "argv", [tool, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(f"open_clip_elip.{tool}", run_name="__main__", alter_sys=True)
    assert exit_.value.code == 0 and "usage" in capsys.readouterr().out.lower()
