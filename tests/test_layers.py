"""The layering of the package (docs/design.md): who may import whom. Checked two ways: the
import statements of every module (anywhere in the file, deferred imports included), and what
importing the torch-free layers really loads in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "tandem"

# layer -> the layers (and third-party roots) its modules must never import
FORBIDDEN = {
    "engine": {"tandem.node", "tandem.cluster", "tandem.api", "tandem.runner", "tandem.cli", "tandem.store"},
    "model": {"torch", "tandem.engine", "tandem.node", "tandem.cluster", "tandem.api", "tandem.runner"},
    "protocol": {"torch", "pydantic", "tandem.engine", "tandem.node", "tandem.api", "tandem.runner"},
    "cluster": {"torch", "tandem.engine", "tandem.node", "tandem.api", "tandem.runner"},
    "api": {"torch", "tandem.engine", "tandem.node", "tandem.runner"},
    "runner": {"tandem.node", "tandem.api", "tandem.cli"},
}
# modules that must load without torch (placement, the cluster state, the API, the vocabulary)
TORCH_FREE = [
    "tandem.model.config",
    "tandem.model.shapes",
    "tandem.model.tokenizer",
    "tandem.protocol.codec",
    "tandem.protocol.runner",
    "tandem.protocol.stages",
    "tandem.protocol.control",
    "tandem.cluster.placement",
    "tandem.cluster.state",
    "tandem.api",
]


def imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(layer: str) -> list[str]:
    found = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in imported_names(path):
            for forbidden in FORBIDDEN[layer]:
                if name == forbidden or name.startswith(forbidden + "."):
                    found.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_what_it_must_not(layer):
    assert violations(layer) == []


def test_the_torch_free_layers_load_without_torch():
    script = (
        "import sys\n"
        f"for name in {TORCH_FREE!r}: __import__(name)\n"
        "loaded = [m for m in ('torch', 'tandem.engine.model_runner', 'tandem.node.node') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing the torch-free layers loaded {result.stdout.strip()}"


def test_the_checks_catch_a_forbidden_import(tmp_path, monkeypatch):
    """The check is not vacuous: a module of the API that imports the node is caught."""
    fake = tmp_path / "tandem"
    (fake / "api").mkdir(parents=True)
    (fake / "api" / "bad.py").write_text("def f():\n    from tandem.node.node import Node\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations("api") == ["api/bad.py imports tandem.node.node"]
