"""The house rule: each stage imports only the stages before it (DESIGN.md's data flow).

Every module's imports are read with `ast`, function-level ones included, so a lazy
import cannot hide an arrow against the flow or a cycle.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module may import a module of a lower rank, or of its own package
# (without a cycle). The leaves import nothing of ours.
ORDER = [
    ("utils.errors", "utils.files"),  # leaves
    ("utils.plots", "utils.report"),
    ("utils.dataset",),
    ("utils.sources",),
    ("utils.image",),
    ("utils.generate",),
    ("utils.input",),
    ("model",),
    ("utils.train",),
    ("utils.detect",),
]
LEAVES = ORDER[0]
SCRIPTS = {"generate_dataset.py": "utils.generate", "train.py": "utils.train", "detect.py": "utils.detect"}


def stage_of(module: str) -> tuple[int, str] | None:
    for rank, group in enumerate(ORDER):
        for pkg in group:
            if module == pkg or module.startswith(pkg + "."):
                return rank, pkg
    return None


def module_files():
    for top in ("utils", "model"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    yield (rel[: -len(".__init__")] if rel.endswith(".__init__") else rel), path


def our_imports(path: str, module: str) -> set[str]:
    """Every project module `path` imports, at any depth, as dotted names."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_pkg = path.endswith("__init__.py")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_pkg else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            # `from utils.input import augment` imports the module utils.input.augment
            names = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] in ("utils", "model"))
    return out


def _is_module(dotted: str) -> bool:
    p = os.path.join(ROOT, *dotted.split("."))
    return os.path.isfile(p + ".py") or os.path.isfile(os.path.join(p, "__init__.py"))


def graph() -> dict[str, set[str]]:
    return {mod: our_imports(path, mod) for mod, path in module_files()}


def test_every_module_has_a_stage():
    assert [m for m in graph() if m not in ("utils", "model") and stage_of(m) is None] == []


def test_no_import_against_the_data_flow():
    wrong = []
    for mod, imports in graph().items():
        if mod in ("utils", "model"):
            continue
        rank, pkg = stage_of(mod)
        for imp in imports:
            target = stage_of(imp)
            if target is None:
                wrong.append(f"{mod} -> {imp} (no stage)")
            elif mod in LEAVES:
                wrong.append(f"{mod} -> {imp} (a leaf imports nothing of ours)")
            elif target[0] > rank or (target[0] == rank and target[1] != pkg):
                wrong.append(f"{mod} -> {imp}")
    assert wrong == []


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            nxt = nxt if nxt in g else next((m for m in g if nxt.startswith(m + ".")), nxt)
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in g and not state.get(nxt):
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(g):
        if not state.get(node):
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("script,package", sorted(SCRIPTS.items()))
def test_each_script_calls_one_package(script, package):
    imports = our_imports(os.path.join(ROOT, script), script[:-3])
    stages = {stage_of(i)[1] for i in imports if stage_of(i)[0] > 0}
    assert stages <= {package}, f"{script} imports {sorted(imports)}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from utils.detect import stream\n    import model.build\n")
    assert our_imports(str(src), "utils.input.m") == {"utils.detect.stream", "model.build"}
