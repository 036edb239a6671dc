"""``python -m research attack``: a trained checkpoint's clean and robust accuracy per attack and eps."""

import io
import json
import math
import os
import re
import sys
from unittest import mock

import pytest
import torch
from PIL import Image

from research.attacks import fgsm, registry
from research.attacks.evaluation import markdown, robust_accuracy
from research.attacks.registry import ATTACKS, AttackSettings, register_attack
from research.commands.attack import main
from research.commands.fit import main as fit
from research.errors import UserError

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
    optim: {lr: 0.01}
data:
  class_path: research.data.SyntheticDataModule
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
        with mock.patch.object(sys, "argv", ["research"]):  # pytest's own arguments are not the CLI's
            fit(["fit", "--config", str(config), "--test_after_fit", "false", "--experiment", "tiny"])
    finally:
        os.chdir(cwd)
    return str(config), str(folder / "checkpoints" / "tiny" / "last.ckpt")


def attack(trained, *args, sanity=False):
    config, ckpt = trained
    return main(["--config", config, "--ckpt_path", ckpt, "--steps", "5", *args, *([] if sanity else ["--no_sanity"])])


def test_prints_and_writes_clean_and_robust_accuracy_per_attack_and_eps(trained, tmp_path, capsys):
    out = tmp_path / "report" / "robust.json"
    rows = attack(trained, "--eps", "0", "0.05", "0.3", "--json", str(out), sanity=True)
    by = {(r["attack"], r["eps"]): r["accuracy"] for r in rows}
    clean = by[("none", 0.0)]
    assert clean > 0.9 and rows[0]["total"] == 26  # the whole test split (10% of 256)
    assert by[("fgsm", 0.0)] == by[("pgd", 0.0)] == clean  # eps 0 leaves x where it is
    assert clean >= by[("pgd", 0.05)] >= by[("pgd", 0.3)]
    assert by[("pgd", 0.3)] < 0.5 * clean and by[("fgsm", 0.3)] >= by[("pgd", 0.3)]
    pgd_row = next(r for r in rows if r["attack"] == "pgd" and r["eps"] == 0.3)
    assert pgd_row["step_size"] == pytest.approx(2.5 * 0.3 / 5) and pgd_row["steps"] == 5
    printed = capsys.readouterr().out
    assert "26 examples of the test split of SyntheticDataModule" in printed
    assert markdown(rows) in printed
    assert "| pgd | linf | 0.3 | 5 | 0.15 | 1 |" in printed
    report = json.loads(out.read_text())
    assert report["rows"] == rows and report["split"] == "test"
    # Each accuracy with its 95% interval, in the table and the JSON.
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] for r in rows)
    assert rows[0]["ci_high"] == 1.0 if clean == 1 else rows[0]["ci_high"] > clean
    # The sanity panel ran on the same 26 examples (fewer than its 100) at the largest eps, and passed.
    assert "Sanity panel (gradient masking), 26 of those examples" in printed
    assert [c["check"] for c in report["sanity"]] == [
        "more steps do not raise accuracy", "more restarts do not raise accuracy",
        "accuracy reaches 0% at L-inf eps 0.5", "iterative at least as strong as one step"]
    assert all(c["passed"] and c["total"] == 26 for c in report["sanity"]), report["sanity"]
    assert "| more steps do not raise accuracy | PGD-10 / 40 / 100 at linf eps 0.3 |" in printed
    assert "WARN" not in printed


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
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing.ckpt: train it first with"):
        main(["--config", config, "--ckpt_path", str(tmp_path / "missing.ckpt")])
    with pytest.raises(ValueError, match="fgsm is an L-inf attack; with norm='l2' attack with pgd, apgd"):
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
    class Brightness(torch.nn.Module):
        """Class 0 for bright images, class 1 for dark ones."""

        def forward(self, x):
            score = x.mean((1, 2, 3)) - 0.5
            return torch.stack([score, -score], -1)

    x, y = torch.full((4, 1, 2, 2), 0.45), torch.zeros(4, dtype=torch.long)  # all misclassified clean
    # An "attack" that brightens, fixing every mistake: the attacker could have kept x instead.
    monkeypatch.setattr(registry, "pgd", lambda model, x, y, **kw: (x + 0.1).clamp(0, 1))
    rows = robust_accuracy(Brightness(), [(x, y)], attacks=["pgd"], eps=[0.3], steps=3)
    assert Brightness()(x + 0.1).argmax(-1).eq(0).all()
    assert rows[0]["accuracy"] == 0 and rows[1]["accuracy"] == 0


def test_the_issues_example_an_attack_that_fixes_a_mistake_counts_nothing():
    """Issue 14: f(x) = [sin(4 pi (mean(x) - 0.1875)), 0] on a 4x4 grey image of 0.5s, label 0, eps 0.3, one PGD
    step of 0.3: the model is wrong clean, both real attacks move it to class 0, and 0/0/0 is the right count."""

    class Sine(torch.nn.Module):
        def forward(self, x):
            score = torch.sin(4 * math.pi * (x.mean((1, 2, 3)) - 0.1875))
            return torch.stack([score, torch.zeros_like(score)], -1)

    x, y = torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, dtype=torch.long)
    assert Sine()(x).argmax(-1).item() == 1
    assert Sine()(fgsm(Sine(), x, y, eps=0.3)).argmax(-1).item() == 0  # the attack "fixes" it
    rows = robust_accuracy(Sine(), [(x, y)], attacks=["fgsm", "pgd"], eps=[0.3], steps=1, step_size=0.3)
    assert [r["correct"] for r in rows] == [0, 0, 0]


def test_progress_is_one_plain_line_per_setting_when_stderr_is_not_a_terminal(trained, capsys):
    rows = attack(trained, "--eps", "0.1", "0.3", "--attack", "fgsm", "pgd")
    err = capsys.readouterr().err
    assert "\x1b[" not in err  # no terminal control codes in a log
    lines = [line for line in err.splitlines() if line.startswith(("attacks:", "["))]
    assert re.fullmatch(r"attacks: clean 100\.00% \(26/26\) in \d+\.\d s; 4 settings to run on 26 images", lines[0])
    labels = ["fgsm linf eps 0.1", "fgsm linf eps 0.3", "pgd linf eps 0.1, 5 steps", "pgd linf eps 0.3, 5 steps"]
    assert len(lines) == 5
    for i, (line, label, row) in enumerate(zip(lines[1:], labels, rows[1:])):
        start = f"[{i + 1}/4] {label}: {100 * row['accuracy']:.2f}% ({row['correct']}/26) in "
        assert line.startswith(start), (line, start)
        assert ("left" in line) == (i < 3)  # the time left, after all but the last


def test_progress_bar_in_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    batches = [(torch.rand(4, 1, 4, 4), torch.randint(0, 3, (4,))) for _ in range(3)]
    rows = robust_accuracy(model, batches, attacks=["pgd"], eps=[0.1], steps=2, progress=True)
    shown = sys.stderr.getvalue()
    assert "\x1b[" in shown  # rich drew a live bar
    assert "images" in shown and "elapsed" in shown and "left" in shown and "settings" in shown
    assert f"[1/1] pgd linf eps 0.1, 2 steps: {100 * rows[1]['accuracy']:.2f}%" in shown


def test_plot_beside_the_json_and_wandb(trained, tmp_path, capsys):
    out = tmp_path / "robust.json"
    attack(trained, "--eps", "0.05", "0.3", "--json", str(out), "--plot", "--wandb")
    png = tmp_path / "robust.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    printed = capsys.readouterr().out
    assert f"plot: {png}" in printed
    assert "logged to wandb: not logged (WANDB_MODE=disabled)" in printed  # the tests' wandb is off


def test_a_missing_matplotlib_is_one_clear_error_before_any_work(trained, monkeypatch, tmp_path):
    config, _ = trained
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    # Raised before the checkpoint is even looked for: not after the attacks have run.
    with pytest.raises(UserError, match=r"matplotlib is not installed: pip install matplotlib"):
        main(["--config", config, "--ckpt_path", str(tmp_path / "missing.ckpt"), "--plot", str(tmp_path / "a.png")])


def test_an_attack_added_to_the_registry_runs_with_no_other_change(trained, monkeypatch, capsys):
    monkeypatch.setattr(registry, "ATTACKS", dict(ATTACKS))

    @register_attack("corners", cost=lambda s: 0)
    def corners(model, x, y, eps, norm, settings):
        """A random corner of the L-inf ball: a weak attack that needs no gradient."""
        return (x + eps * torch.randn_like(x).sign()).clamp(0, 1)

    rows = attack(trained, "--eps", "0.3", "--attack", "corners", "pgd")
    assert [r["attack"] for r in rows] == ["none", "corners", "pgd"]
    assert rows[1]["steps"] == 5 and rows[1]["step_size"] is None  # the default description: steps and restarts
    assert rows[1]["accuracy"] >= rows[2]["accuracy"]
    printed = capsys.readouterr()
    assert "| corners | linf | 0.3 | 5 |  | 1 |" in printed.out and "corners linf eps 0.3, 5 steps: " in printed.err
    with pytest.raises(ValueError, match="attack 'corners' registered twice"):
        register_attack("corners")(corners)
    with pytest.raises(ValueError, match="unknown attack 'pdg'; did you mean 'pgd'"):
        robust_accuracy(torch.nn.Flatten(), [], attacks=["pdg"], eps=[0.1])
    assert AttackSettings().steps == 40 and set(ATTACKS) >= {"fgsm", "pgd"}


def test_autoattack_and_its_parts_run_from_the_command_and_are_no_weaker_than_pgd(trained, capsys):
    rows = attack(trained, "--eps", "0.1", "--attack", "pgd", "apgd", "apgd-t", "fab-t", "square", "autoattack")
    by = {r["attack"]: r for r in rows}
    assert set(by) == {"none", "pgd", "apgd", "apgd-t", "fab-t", "square", "autoattack"}
    # The ensemble is the worst case per example of its parts, so it is at most each of them (up to one
    # example: a part run alone draws other random starts than inside the ensemble).
    one = 1 / by["pgd"]["total"]
    assert all(by["autoattack"]["accuracy"] <= by[name]["accuracy"] + one for name in ("pgd", "apgd-t", "square"))
    assert (by["apgd"]["steps"], by["square"]["steps"], by["autoattack"]["steps"]) == (100, 5000, None)
    assert "| autoattack | linf | 0.1 |" in capsys.readouterr().out
