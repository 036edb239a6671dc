"""``python -m research.attack``: a trained checkpoint's clean and robust accuracy per attack and eps."""

import json
import os
import sys
from unittest import mock

import pytest
import torch

from research.attack import main, markdown
from research.fit import main as fit

CONFIG = """
seed_everything: 0
trainer:
  max_epochs: 2
  accelerator: cpu
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: research.tasks.ImageClassification
  init_args:
    model: {name: five_layer_cnn, num_classes: 4, in_chans: 1, img_size: 16}
    lr: 0.01
data:
  class_path: research.data.SyntheticImages
  init_args: {num_samples: 256, num_classes: 4, img_size: 16, in_chans: 1, batch_size: 32}
"""


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: a second OpenMP thread only adds waiting (100x slower steps on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, _one_thread):
    """A config and the last checkpoint of a short run on learnable synthetic images (about 2 s)."""
    folder = tmp_path_factory.mktemp("attack_cli")
    config = folder / "tiny.yaml"
    config.write_text(CONFIG)
    cwd = os.getcwd()
    os.chdir(folder)  # checkpoints/ lands in the test's folder
    try:
        with mock.patch.object(sys, "argv", ["research.fit"]):  # pytest's own arguments are not the CLI's
            fit(["fit", "--config", str(config), "--test_after_fit", "false", "--experiment", "tiny"])
    finally:
        os.chdir(cwd)
    return str(config), str(folder / "checkpoints" / "tiny" / "last.ckpt")


def attack(trained, *args):
    config, ckpt = trained
    return main(["--config", config, "--ckpt_path", ckpt, "--steps", "5", *args])


def test_prints_and_writes_clean_and_robust_accuracy_per_attack_and_eps(trained, tmp_path, capsys):
    out = tmp_path / "report" / "robust.json"
    rows = attack(trained, "--eps", "0", "0.05", "0.3", "--json", str(out))
    by = {(r["attack"], r["eps"]): r["accuracy"] for r in rows}
    clean = by[("none", 0.0)]
    assert clean > 0.9 and rows[0]["total"] == 26  # the whole test split (10% of 256)
    assert by[("fgsm", 0.0)] == by[("pgd", 0.0)] == clean  # eps 0 leaves x where it is
    assert clean >= by[("pgd", 0.05)] >= by[("pgd", 0.3)]
    assert by[("pgd", 0.3)] < 0.5 * clean and by[("fgsm", 0.3)] >= by[("pgd", 0.3)]
    pgd_row = next(r for r in rows if r["attack"] == "pgd" and r["eps"] == 0.3)
    assert pgd_row["step_size"] == pytest.approx(2.5 * 0.3 / 5) and pgd_row["steps"] == 5
    printed = capsys.readouterr().out
    assert "26 examples of the test split of SyntheticImages" in printed
    assert markdown(rows) in printed
    assert "| pgd | linf | 0.3 | 5 | 0.15 | 1 |" in printed
    report = json.loads(out.read_text())
    assert report["rows"] == rows and report["split"] == "test"


def test_same_seed_same_numbers_and_a_subset_of_the_split(trained):
    first = attack(trained, "--eps", "0.1", "--attack", "pgd", "--num_samples", "10", "--seed", "3")
    again = attack(trained, "--eps", "0.1", "--attack", "pgd", "--num_samples", "10", "--seed", "3")
    assert first == again and first[0]["total"] == 10
    assert [r["attack"] for r in first] == ["none", "pgd"]


def test_l2_pgd_and_cli_overrides_reach_the_datamodule(trained):
    rows = attack(trained, "--eps", "1.0", "--attack", "pgd", "--norm", "l2", "--step_size", "0.5", "--split", "val",
                  "--data.init_args.batch_size", "5")
    assert rows[1]["norm"] == "l2" and rows[1]["step_size"] == 0.5
    assert rows[0]["total"] == 26  # the validation split: 10% of the 256 images, like the test split


def test_clear_errors(trained, tmp_path):
    config, ckpt = trained
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*missing.ckpt; pass --ckpt_path"):
        main(["--config", config, "--ckpt_path", str(tmp_path / "missing.ckpt")])
    with pytest.raises(ValueError, match="fgsm is an L-inf attack; with norm='l2' attack with pgd only"):
        attack(trained, "--norm", "l2")
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.replace("batch_norm", "").replace("in_chans: 1, img_size: 16}",
                                                              "in_chans: 1, img_size: 16, batch_norm: false}"))
    with pytest.raises(ValueError, match="the checkpoint holds the model .* but the config describes .*batch_norm"):
        main(["--config", str(other), "--ckpt_path", ckpt])
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        attack(trained, "--eps", "-0.1")
    with pytest.raises(SystemExit):
        attack(trained, "--attack", "cw")


def test_robust_never_exceeds_clean_even_where_the_attack_fixes_a_mistake(monkeypatch):
    import research.attack

    class Brightness(torch.nn.Module):
        """Class 0 for bright images, class 1 for dark ones."""

        def forward(self, x):
            score = x.mean((1, 2, 3)) - 0.5
            return torch.stack([score, -score], -1)

    x, y = torch.full((4, 1, 2, 2), 0.45), torch.zeros(4, dtype=torch.long)  # all misclassified clean
    # An "attack" that brightens, fixing every mistake: the attacker could have kept x instead.
    monkeypatch.setattr(research.attack, "pgd", lambda model, x, y, **kw: (x + 0.1).clamp(0, 1))
    rows = research.attack.robust_accuracy(Brightness(), [(x, y)], attacks=["pgd"], eps=[0.3], steps=3)
    assert Brightness()(x + 0.1).argmax(-1).eq(0).all()
    assert rows[0]["accuracy"] == 0 and rows[1]["accuracy"] == 0
