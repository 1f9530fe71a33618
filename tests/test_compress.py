"""scripts/compress.py on two tiny trained runs: every row measured, the stored counts exact,
the sizes those of the files written, the fine-tuned rows those of the engine's runs."""
import json

import pytest

from conftest import load_script
from rpg_train.engine import train

AMOUNTS = (0.5, 0.8)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from conftest import QUICK, _compose

    root = tmp_path_factory.mktemp("compress")
    train(_compose(QUICK, out_dir=root / "rpg"))  # ring 2000
    train(_compose([*QUICK, "rpg=none"], out_dir=root / "dense"))
    out = root / "out" / "compress.md"
    load_script("compress").main(["--rpg", str(root / "rpg"), "--dense", str(root / "dense"),
                                  "--out", str(out), "--work", str(root / "work")])
    return root, {(r["model"], r["variant"]): r for r in json.loads(
        out.with_suffix(".json").read_text())}


def test_every_row_is_there_with_its_stored_count(table):
    _, rows = table
    assert len(rows) == 17
    for a in AMOUNTS:
        assert rows["RPG", f"{a:.0%} ring pruned"]["stored"] == round(2000 * (1 - a))
        tuned = rows["RPG", f"{a:.0%} ring pruned + 1 epoch fine-tuning"]
        assert tuned["stored"] == round(2000 * (1 - a))  # still pruned after fine-tuning
        both = rows["RPG", f"{a:.0%} ring pruned + 1 epoch fine-tuning, int8 kept entries "
                           "(per ring)"]
        assert both["stored"] == tuned["stored"] and both["bytes"] < tuned["bytes"]
        dense = rows["dense", f"{a:.0%} weights pruned + 1 epoch fine-tuning"]
        assert dense["stored"] == round(rows["dense", "float32"]["stored"] * (1 - a))


def test_sizes_are_the_files_and_shrink_as_they_should(table):
    root, rows = table
    rpg = {v: r["bytes"] for (m, v), r in rows.items() if m == "RPG"}
    dense = {v: r["bytes"] for (m, v), r in rows.items() if m == "dense"}
    assert rpg["float32 ring"] == (root / "work" / "rpg-float32.st").stat().st_size
    # ring 2000: float32 -> 8 bits saves 3 bytes an entry, -> 4 bits 3.5 (headers aside)
    assert rpg["float32 ring"] - rpg["int8 ring (per ring)"] == pytest.approx(6000, abs=300)
    assert rpg["float32 ring"] - rpg["int4 ring (per ring)"] == pytest.approx(7000, abs=300)
    generated = rows["dense", "float32"]["stored"]
    assert dense["float32"] - dense["int8 weights (per output channel)"] > 2.9 * generated
    assert dense["80% weights pruned"] < dense["50% weights pruned"] < dense["float32"]


def test_fine_tuned_rows_are_the_engines_runs(table):
    root, rows = table
    for a in AMOUNTS:
        done = json.loads((root / "work" / f"rpg-prune{a}-ft1" / "results.json").read_text())
        assert done["ring_prune"]["amount"] == a and done["ring_prune"]["finetune_epochs"] == 1
        assert rows["RPG", f"{a:.0%} ring pruned + 1 epoch fine-tuning"]["top1"] == \
            done["final_top1"]
        assert rows["RPG", f"{a:.0%} ring pruned"]["top1"] == done["ring_prune"]["pruned_top1"]
        dense = json.loads((root / "work" / f"dense-prune{a}-ft1" / "results.json").read_text())
        assert rows["dense", f"{a:.0%} weights pruned + 1 epoch fine-tuning"]["top1"] == \
            dense["final_top1"]
    text = (root / "out" / "compress.md").read_text()
    assert "python scripts/compress.py --rpg" in text and "| RPG | float32 ring | 2,000 |" in text


@pytest.mark.parametrize("bad, said", [
    (["--amounts", "1.5"], "--amounts [1.5]: each must be in (0, 1)"),
    (["--dense", "OTHER"], "trained on synthetic and --dense on cifar10: give twins"),
])
def test_bad_arguments_are_one_line(table, capsys, bad, said):
    import torch

    root, _ = table
    other = root / "other"
    other.mkdir(exist_ok=True)
    state = torch.load(root / "dense" / "last.pt", weights_only=True)
    state["config"]["data"]["name"] = "cifar10"  # a dense run on other data
    torch.save(state, other / "last.pt")
    args = {"--rpg": str(root / "rpg"), "--dense": str(root / "dense")}
    args.update({bad[0]: bad[1].replace("OTHER", str(other))})
    with pytest.raises(SystemExit) as err:
        load_script("compress").main([x for kv in args.items() for x in kv])
    assert err.value.code == 2 and said in capsys.readouterr().err


def test_a_work_folder_of_another_source_is_not_reused(table, capsys):
    import shutil

    root, _ = table
    shutil.copytree(root / "rpg", root / "rpg-copy")  # another checkpoint file, same numbers
    with pytest.raises(SystemExit, match="holds a fine-tuning run of another checkpoint"):
        load_script("compress").main(["--rpg", str(root / "rpg-copy"), "--dense",
                                      str(root / "dense"), "--work", str(root / "work"),
                                      "--out", str(root / "out2" / "c.md")])
