"""No package attribute shadows one of its modules: `pkg.name` is the module `pkg/name.py`
or nothing, so `from pkg import name` and `import pkg.name` never mean two things."""
import importlib
import pkgutil
import sys

import hydra_plugins.rpg_train_launcher
import rpg_train


def shadowed_modules() -> set[str]:
    """The modules of rpg_train and its Hydra plugin that their package's attribute of the
    same name is not."""
    for root in (rpg_train, hydra_plugins.rpg_train_launcher):
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            importlib.import_module(info.name)
    shadows = set()
    for name, module in list(sys.modules.items()):
        package, _, leaf = name.rpartition(".")
        if module is None or not name.startswith(("rpg_train.", "hydra_plugins.rpg_train")):
            continue
        if leaf in vars(sys.modules[package]) and vars(sys.modules[package])[leaf] is not module:
            shadows.add(name)
    return shadows


def test_no_package_attribute_shadows_a_module():
    assert shadowed_modules() == set(), "rename the module or the attribute"


def test_a_shadowing_attribute_is_found(monkeypatch):
    import rpg_train.log

    monkeypatch.setattr(rpg_train.log, "metrics", lambda: None, raising=False)
    assert "rpg_train.log.metrics" in shadowed_modules()
