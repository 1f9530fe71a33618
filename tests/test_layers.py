"""The dependencies point one way (docs/design.md, "Layers"): each layer, imported alone,
loads nothing of the layers above it."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ENTRY = ["rpg_train.evaluate", "rpg_train.export", "rpg_train.__main__"]
VALIDATION = "rpg_train.validation"
SUBSYSTEMS = ["rpg_train.rpg", "rpg_train.models", "rpg_train.data", "rpg_train.log"]
# each layer -> what it must not load (a package stands for its modules)
LAYERS = {
    "rpg_train.errors": ["rpg_train.config", *SUBSYSTEMS, "rpg_train.engine", VALIDATION, *ENTRY],
    "rpg_train.config": [*SUBSYSTEMS, "rpg_train.engine", VALIDATION, *ENTRY],
    "rpg_train.rpg": ["rpg_train.config", "rpg_train.models", "rpg_train.data", "rpg_train.log",
                      "rpg_train.engine", VALIDATION, *ENTRY],
    "rpg_train.models": ["rpg_train.engine", VALIDATION, *ENTRY],
    "rpg_train.data": ["rpg_train.engine", VALIDATION, *ENTRY],
    "rpg_train.log": ["rpg_train.engine", VALIDATION, *ENTRY],
    "rpg_train.engine": [*ENTRY],
    "rpg_train.evaluate": [],  # the control: an entry point loads the layers below it
}

# One interpreter imports the third-party libraries once, then forks a child per layer that
# imports the layer into a package-free sys.modules (a process per layer would take a minute).
PROBE = """
import json, os, sys
import hydra.core.config_store, numpy, omegaconf, torch, torchvision, tqdm
assert not any(m.startswith("rpg_train") for m in sys.modules)
loaded = {}
for layer in sys.argv[1:]:
    r, w = os.pipe()
    if os.fork() == 0:  # the child: import, report, and never return into this loop
        try:
            __import__(layer)
            ours = sorted(m for m in sys.modules if m.startswith("rpg_train"))
            os.write(w, json.dumps(ours).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as pipe:
        loaded[layer] = json.loads(pipe.read() or "null")
    os.wait()
print(json.dumps(loaded))
"""

SRC = Path(__file__).resolve().parents[1] / "src"
# the imports made inside functions that reach up, each for a reason
LATE = {("rpg_train.engine.trainer", "rpg_train.validation"),  # train(cfg) validates first
        ("rpg_train.rpg.compact", "rpg_train.models")}  # load_compact's default builder


def loaded_by_each_layer() -> dict:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", PROBE, *LAYERS], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_each_layer_loads_nothing_above_it():
    loaded = loaded_by_each_layer()
    assert "rpg_train.engine.trainer" in loaded["rpg_train.evaluate"]  # the probe sees imports
    for layer, above in LAYERS.items():
        assert loaded[layer] and layer in loaded[layer], f"{layer} does not import alone"
        wrong = [m for m in loaded[layer] for a in above if m == a or m.startswith(a + ".")]
        assert not wrong, f"importing {layer} loads {wrong}"


def imports(path: Path, module: str) -> set:
    """Every rpg_train module a file names in an import, at its top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:  # relative: its package, then up one package per extra dot
                here = package.split(".")[:len(package.split(".")) + 1 - node.level]
                base = ".".join([*here, node.module] if node.module else here)
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("rpg_train")}


def test_no_import_inside_a_function_reaches_up():
    """What the fresh interpreter cannot see: an import run only when a function is called."""
    for path in sorted((SRC / "rpg_train").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        layer = next((k for k in LAYERS if module == k or module.startswith(k + ".")), None)
        for target in imports(path, module) if layer else ():
            up = [a for a in LAYERS[layer] if target == a or target.startswith(a + ".")]
            assert not up or (module, up[0]) in LATE, f"{module} imports {target}"
