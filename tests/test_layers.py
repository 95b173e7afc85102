"""The package's imports run one way: no circle, and no module imports from a layer above its own
(function-level imports included). Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import its own layer's modules (no circle) and any layer below;
# within the run layer, training and inference stand beside each other and import neither.
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {
        "base": (
            "camlt",
            "camlt.config",
            "camlt.checkpoint",
            "camlt.rundir",
            "camlt.metrics",
            "camlt.distributed",
            "camlt.compat",
            "camlt.registry",
            "camlt.errors",
        )
    },  # fmt: skip
    {"data and models": ("camlt.data", "camlt.heads", "camlt.models", "camlt.losses")},
    {
        "methods": (
            "camlt.mixing",
            "camlt.regularize",
            "camlt.sam",
            "camlt.stage2",
            "camlt.viz",
            "camlt.localisation",
            "camlt.priors",
            "camlt.calibration",
            "camlt.adapt",
            "camlt.preflight",
            "camlt.finetune",
            "camlt.probe",
        )
    },
    # a trained run opened and evaluated: shared by training's evaluation and every reader of a run
    {"evaluation": ("camlt.trained",)},
    {
        "training": ("camlt.engine", "camlt.lifecycle", "camlt.tblog"),
        "inference": ("camlt.predict", "camlt.export", "camlt.api"),
    },
    {"commands": ("camlt.report", "camlt.cli_inspect", "camlt.cluster", "camlt.tune", "camlt.cli")},
]


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The camlt modules a file imports, anywhere in it (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m == "camlt" or m.startswith("camlt.")}


def graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = {module_name(p, src): p for p in src.rglob("*.py")}
    return {
        name: {m for m in imports_of(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }


def place(module: str) -> tuple[int, str]:
    """(layer, group) of a module: the longest listed prefix that it starts with."""
    matches = [
        (len(prefix), level, group)
        for level, groups in enumerate(LAYERS)
        for group, prefixes in groups.items()
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    _, level, group = max(matches)
    return level, group


def test_every_module_has_a_layer_and_imports_only_downward_or_beside():
    wrong = []
    for module, targets in graph().items():
        level, group = place(module)
        for target in targets:
            t_level, t_group = place(target)
            if t_level > level or (t_level == level and t_group != group):
                wrong.append(f"{module} ({group}) imports {target} ({t_group})")
    assert not wrong, "imports that run upward or across:\n" + "\n".join(sorted(wrong))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_reader_sees_an_import_held_apart_inside_a_function(tmp_path):
    """The check itself can fail: a base module importing the engine lazily is an edge."""
    fake = tmp_path / "camlt"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "config.py").write_text("def f():\n    from camlt.engine import train\n")
    (fake / "engine.py").write_text("from . import config\nfrom .data import loaders\n")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "loaders.py").write_text("from ..config import f\n")
    edges = graph(tmp_path)
    assert edges["camlt.config"] == {"camlt.engine"}
    assert {"camlt.config", "camlt.data.loaders"} <= edges["camlt.engine"]
    assert "camlt.config" in edges["camlt.data.loaders"]
    assert place("camlt.config")[0] < place("camlt.engine")[0]
