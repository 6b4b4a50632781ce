"""The layering the README's architecture map describes: every `import dartlm...` in the package (at module level or
inside a function) goes to a layer listed before its own, or within its own package; so there is no import
circle."""

from __future__ import annotations

import ast
from pathlib import Path

import dartlm

PACKAGE = Path(dartlm.__file__).parent
# Bottom to top; a module may import from its own layer's package or from the layers before it.
LAYERS = ["storage", "registry", "config", "data", "losses", "model", "thinking", "methods", "training", "generate",
          "exports", "engines", "eval", "params", "lm_eval_tasks", "experiments", "cli"]


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    if part not in LAYERS:
        raise AssertionError(f"{module}: not in the architecture's layers; add its package to LAYERS and the README")
    return LAYERS.index(part)


def imports() -> list[tuple[str, str, int]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        module = "dartlm." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dartlm."):
                found.append((module, node.module, node.lineno))
            elif isinstance(node, ast.Import):
                found += [(module, a.name, node.lineno) for a in node.names if a.name.startswith("dartlm.")]
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{source}:{line} imports {target}" for source, target, line in imports()
              if layer_of(target) > layer_of(source)]
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import():
    assert layer_of("dartlm.experiments.demo") > layer_of("dartlm.methods.dart") > layer_of("dartlm.config")
    assert any(t == "dartlm.config" for s, t, _ in imports() if s == "dartlm.methods.base")


def test_no_import_circle_between_modules():
    modules = {s for s, _, _ in imports()}

    def resolve(name: str) -> str:  # `from dartlm.thinking import X` imports the package dartlm.thinking
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {}
    for source, target, _ in imports():
        graph.setdefault(source, set()).add(resolve(target))
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
