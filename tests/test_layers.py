"""The import-layer contract: every module of clipfast has a layer, and imports only from layers below it (or
beside it, without a cycle). Imports deferred into functions count too: a deferred import hides a dependency
until the call runs, it does not remove it. docs/architecture.md draws these layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "clipfast"

# bottom (0) to top; a module may import from its own layer or any layer below, never from above
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("errors", "constants"),
    1: ("hub", "configuration"),
    2: ("formats", "torchscript", "kernels", "outputs", "workers", "image_io", "image_utils", "pillow_resample",
        "text_cleaning", "bpe", "tokenization_utils", "tokenization_base", "tensor_utils", "activations",
        "model_inputs"),
    3: ("tokenization", "tokenization_fast", "image_processing", "loading"),
    4: ("modeling", "processing"),
    5: ("optimize", "auto", "convert"),
    6: ("pipelines",),
    7: ("bulk", "ray", "collection", "index", "ann", "batching", "gallery", "server"),
    8: ("cli", "__main__", "__init__", "models", "models.clip", "models.clip.configuration_clip",
        "models.clip.modeling_clip", "models.clip.tokenization_clip", "models.clip.tokenization_clip_fast",
        "models.clip.image_processing_clip", "models.clip.processing_clip"),
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}
MAX_LINES = 1000


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """The clipfast modules ``path`` imports, wherever the import statement stands (module top, function body,
    ``if TYPE_CHECKING``)."""
    found: set[str] = set()
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                module = ".".join(["clipfast", *base] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from clipfast import hub` imports a module
    modules = set(_modules())
    return {m.removeprefix("clipfast.") for m in found if m.startswith("clipfast.")
            and m.removeprefix("clipfast.") in modules} - {name}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path, name) for name, path in _modules().items()}


def test_every_module_has_a_layer():
    missing = sorted(set(_modules()) - set(LAYER_OF))
    assert not missing, f"modules without a layer: {missing}; add each to LAYERS in {Path(__file__).name}"


def test_imports_go_downward_only():
    upward = [f"{a} (layer {LAYER_OF[a]}) imports {b} (layer {LAYER_OF[b]})"
              for a, targets in _graph().items() for b in sorted(targets)
              if a in LAYER_OF and b in LAYER_OF and LAYER_OF[b] > LAYER_OF[a]]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_a_thousand_lines(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    limit = 800 if name == "modeling" else MAX_LINES  # the model file reads like the math
    assert lines <= limit, f"{name}.py has {lines} lines (limit {limit}): it is doing two jobs; split it"


def test_the_checker_sees_deferred_imports(tmp_path):
    """The contract is only worth something if imports inside functions (and relative ones) are found."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from clipfast.modeling import CLIPModel\n    import clipfast.hub\n"
                      "    from . import errors\n    from clipfast import constants\n")
    assert _imports(source, "probe") == {"modeling", "hub", "errors", "constants"}
