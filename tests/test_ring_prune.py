"""rpg.prune: ring pruning after training, with and without fine-tuning, through the engine."""
import re

import pytest
import torch

from rpg_train.engine import train
from rpg_train.errors import UserError
from rpg_train.validation import validate

PRUNE = ["rpg.prune.amount=0.5", "rpg.prune.finetune_epochs=2"]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _ring(path):
    return _state(path)["model"]["rpg_rings.network.weight"]  # the network scope's one ring


def test_pruned_entries_are_exactly_the_amount_and_stay_zero_while_fine_tuning(quick_cfg,
                                                                              tmp_path):
    plain = train(quick_cfg(out="plain"))
    res = train(quick_cfg(*PRUNE, out="run"))
    rec, report = res["ring_prune"], res["param_report"]
    assert (rec["entries"], rec["pruned"], rec["amount"]) == (2000, 1000, 0.5)
    assert rec["trained_epochs"] == 1
    assert rec["before_top1"] == plain["final_top1"]  # the same training up to the pruning
    assert res["epochs"] == 3 and res["steps"] == 3 * 4
    assert report["trainable"] == plain["param_report"]["trainable"] - 1000
    assert report["ring_nonzero"] == 1000
    ring = _ring(tmp_path / "run" / "last.pt")
    masks = _state(tmp_path / "run" / "last.pt")["ring_prune"]["masks"]
    assert int((ring == 0).sum()) == 1000 and torch.equal(ring != 0, masks[0])
    # the fine-tuning moved the entries it kept: the ring is not the one pruned at epoch 1
    trained = _ring(tmp_path / "plain" / "last.pt")
    assert not torch.equal(ring, trained * masks[0])
    kept = trained.abs()[masks[0]].min()
    assert kept >= trained.abs()[~masks[0]].max()  # the smallest magnitudes went


def test_without_fine_tuning_the_final_model_is_the_pruned_one(quick_cfg):
    res = train(quick_cfg("rpg.prune.amount=0.8"))
    rec = res["ring_prune"]
    assert rec["pruned"] == 1600 and rec["finetune_epochs"] == 0
    assert res["final_top1"] == rec["pruned_top1"] == res["best_top1"]
    assert res["epochs"] == 1 and res["steps"] == 4


def test_a_finished_run_resumed_with_the_keys_equals_one_run_that_prunes(quick_cfg, tmp_path):
    one = train(quick_cfg(*PRUNE, out="one"))
    train(quick_cfg(out="trained"))
    two = train(quick_cfg(*PRUNE, f"trainer.resume={tmp_path / 'trained' / 'last.pt'}",
                          out="two"))
    assert two["ring_prune"] == one["ring_prune"]
    assert two["final_top1"] == one["final_top1"] and two["steps"] == one["steps"]
    assert torch.equal(_ring(tmp_path / "one" / "last.pt"), _ring(tmp_path / "two" / "last.pt"))


def test_a_run_cut_while_fine_tuning_resumes_exactly(quick_cfg, tmp_path):
    full = train(quick_cfg(*PRUNE, out="full"))
    train(quick_cfg(*PRUNE, "trainer.max_steps=6", out="cut"))  # mid fine-tuning epoch 1
    assert _state(tmp_path / "cut" / "last.pt")["step"] == 6
    resumed = train(quick_cfg(*PRUNE, "trainer.resume=auto", out="cut"))
    assert resumed["ring_prune"] == full["ring_prune"]
    assert resumed["final_top1"] == full["final_top1"]
    assert torch.equal(_ring(tmp_path / "cut" / "last.pt"), _ring(tmp_path / "full" / "last.pt"))


def test_resuming_a_pruned_run_with_other_settings_is_refused(quick_cfg):
    train(quick_cfg(*PRUNE, "trainer.max_steps=6"))
    with pytest.raises(UserError, match=re.escape("was pruned with rpg.prune.amount 0.5 "
                                                  "(now 0.8)")):
        train(quick_cfg("rpg.prune.amount=0.8", "rpg.prune.finetune_epochs=2",
                        "trainer.resume=auto"))


def test_a_pruned_step_schedule_run_keeps_its_training_epochs(quick_cfg):
    train(quick_cfg(*PRUNE, "sched=step", "trainer.max_steps=6"))
    with pytest.raises(UserError, match=re.escape("trainer.epochs 1 (now 2)")):
        train(quick_cfg(*PRUNE, "sched=step", "trainer.epochs=2", "trainer.resume=auto"))


@pytest.mark.parametrize("overrides, message", [
    (["rpg.prune.amount=1.0"], "rpg.prune.amount=1.0 must be in [0, 1)"),
    (["rpg.prune.amount=-0.1"], "rpg.prune.amount=-0.1 must be in [0, 1)"),
    (["rpg=none", "rpg.prune.amount=0.5"], "rpg.prune.amount=0.5 prunes ring entries"),
    (["rpg.prune.finetune_epochs=1"], "rpg.prune.finetune_epochs=1 fine-tunes a pruned ring"),
    (["rpg.prune.amount=0.5", "rpg.prune.lr=0"], "rpg.prune.lr=0.0 must be positive"),
])
def test_bad_prune_settings_are_one_line_naming_the_key(quick_cfg, overrides, message):
    with pytest.raises(UserError) as err:
        validate(quick_cfg(*overrides))
    assert str(err.value).startswith(message)


def test_max_steps_ending_the_training_epochs_still_prunes(quick_cfg, caplog):
    res = train(quick_cfg(*PRUNE, "trainer.max_steps=4"))  # QUICK: 4 steps an epoch
    assert res["ring_prune"]["pruned"] == 1000 and res["steps"] == 4
    assert res["final_top1"] == res["ring_prune"]["pruned_top1"]
    assert "no fine-tuning steps are left" in caplog.text


def test_the_fine_tuning_lr_stays_under_its_own_base(quick_cfg, tmp_path):
    """sched.min_lr is scaled with the lr: a floor above lr / 10 would make cosine climb."""
    import json

    train(quick_cfg(*PRUNE, "sched.min_lr=0.1"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    base = 0.02 * 16 / 256  # rpg.prune.lr default optim.lr / 10, per 256 images, batch 16
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(r["lr"] <= base + 1e-12 for r in rows[1:])


def test_evaluate_reports_the_pruned_runs_param_counts(quick_cfg, tmp_path, capsys):
    """`python -m rpg_train.evaluate` on a ring-pruned checkpoint rebuilds the model with its
    masks: the same parameter report as the run's results.json, and the same test top-1."""
    import json

    from rpg_train.evaluate import main as evaluate_main

    res = train(quick_cfg("rpg.prune.amount=0.5", "rpg.prune.finetune_epochs=1"))
    assert evaluate_main([f"ckpt={tmp_path / 'run' / 'last.pt'}"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["param_report"] == json.loads(json.dumps(res["param_report"]))
    assert ev["param_report"]["trainable"] == res["param_report"]["trainable"]
    assert ev["top1"] == res["final_top1"]


def test_each_phase_is_entered_once_and_a_resume_enters_only_its_own(quick_cfg, monkeypatch):
    from rpg_train.engine import phases

    entered, real = [], phases.enter
    monkeypatch.setattr(phases, "enter",
                        lambda phase, run, row: (entered.append(phase.name),
                                                 real(phase, run, row))[1])
    train(quick_cfg(*PRUNE, "trainer.max_steps=6"))  # cut in the fine-tuning's first epoch
    assert entered == ["train", "finetune"]
    train(quick_cfg(*PRUNE, "trainer.resume=auto"))
    assert entered == ["train", "finetune", "finetune"]
