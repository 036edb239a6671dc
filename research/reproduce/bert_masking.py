"""Table: BERT's masking strategies (Devlin et al. 2019, arXiv 1810.04805, Appendix C.2, Table 8), scaled down.

BERT selects 15% of the tokens to predict and, of those, replaces 80% with ``[MASK]``, 10% with a random
token (RND) and keeps 10% (SAME), to soften the mismatch between pre-training and fine-tuning, where
``[MASK]`` never occurs. Table 8 pre-trains BERT-Base with six strategies (MASK/SAME/RND) and reports the
dev accuracy of MNLI fine-tuned, and the dev F1 of NER fine-tuned and feature-based:

====================  ====  ====  ====
MASK / SAME / RND     MNLI  NER   NER (feature-based)
====================  ====  ====  ====
80 / 10 / 10          84.2  95.4  94.9
100 / 0 / 0           84.3  94.9  94.0
80 / 0 / 20           84.1  95.2  94.6
80 / 20 / 0           84.4  95.2  94.7
0 / 20 / 80           83.7  94.8  94.6
0 / 0 / 100           83.6  94.9  94.6
====================  ====  ====  ====

"Fine-tuning is surprisingly robust to different masking strategies" (a spread of 0.8 on MNLI), while
"using only the RND strategy performs much worse than our strategy" (and MASK alone hurts the
feature-based approach, which we do not run).

Ours pre-trains BERT-Tiny (configs/bert/bible_bert_tiny.yaml: 500 steps of 32 x 128 tokens on the English
side of the shipped Bible) with each strategy (the datamodule's ``mask_token_prob`` and
``random_token_prob``), measures its masked-token accuracy on the held-out test verses masked once with
BERT's 80/10/10 (the same examples for every strategy), then fine-tunes it to classify a verse by its
Bible division (configs/bert/bible_bert_tiny_division.yaml, ten classes, real labels) and measures test
accuracy, the counterpart of MNLI's fine-tuned accuracy.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from research.reproduce.plots import two_panels
from research.reproduce.runs import config_key, fit_run, model_override, quick_data
from research.reproduce.table import Row, Table

PRETRAIN = "bert/bible_bert_tiny.yaml"
FINETUNE = "bert/bible_bert_tiny_division.yaml"
PAPER = "Devlin et al. 2019, Table 8 (trend; BERT-Base, MNLI dev)"
OURS = "ours (test verses)"


class Strategy(NamedTuple):
    """A row of Table 8: shares of the selected tokens that become [MASK], stay (SAME), become random (RND)."""

    mask: float
    same: float
    random: float
    paper_mnli: float  # the paper's MNLI dev accuracy (%), fine-tuned
    paper_ner: float  # its NER dev F1, fine-tuned

    @property
    def label(self) -> str:
        return f"{self.mask:.0%}/{self.same:.0%}/{self.random:.0%}".replace("%", "")


STRATEGIES: dict[str, Strategy] = {
    "bert": Strategy(0.8, 0.1, 0.1, 84.2, 95.4),
    "mask": Strategy(1.0, 0.0, 0.0, 84.3, 94.9),
    "mask_rnd": Strategy(0.8, 0.0, 0.2, 84.1, 95.2),
    "mask_same": Strategy(0.8, 0.2, 0.0, 84.4, 95.2),
    "same_rnd": Strategy(0.0, 0.2, 0.8, 83.7, 94.8),
    "rnd": Strategy(0.0, 0.0, 1.0, 83.6, 94.9),
}
# Fine-tuning is robust to the strategy: the paper's MNLI spread is 0.8 points; we allow 1.2 more for one
# fine-tuning seed per strategy on 1,554 test verses (a standard error of about 1.2 points at 70% accuracy).
SPREAD_TOLERANCE = 1.2


def pretrain_overrides(name: str) -> tuple[str, ...]:
    """Overrides of PRETRAIN for strategy ``name`` (training batches only; the evaluation keeps 80/10/10).

    Raises:
        KeyError: ``name`` is not in :data:`STRATEGIES`.
    """
    strategy = STRATEGIES[name]
    return ("--data.init_args.mask_token_prob", str(strategy.mask),
            "--data.init_args.random_token_prob", str(strategy.random))


@functools.cache
def measured(name: str, quick: bool) -> dict[str, float]:
    """Masked-token accuracy (%) of strategy ``name``'s pre-training and test accuracy (%) of its fine-tuning."""
    # quick: 8 examples a step (not 32) of every 16th verse (tokenizing all of them took most of a quick run)
    pretrain = fit_run(PRETRAIN, (*pretrain_overrides(name), *quick_data(quick, batch_size=8, verses=True)),
                       quick=quick)
    if not pretrain.last:
        raise FileNotFoundError(f"pre-training with strategy {name} wrote no checkpoint")
    finetune = fit_run(FINETUNE, (*model_override(FINETUNE, pretrained=pretrain.last), "--data.init_args.tokenizer_of",
                                  pretrain.last, *quick_data(quick, batch_size=8, verses=True, references=True)),
                       quick=quick)
    return {"mlm_acc": 100 * pretrain.metrics["test/acc"], "finetune_acc": 100 * finetune.metrics["test/acc"]}


def spread(quick: bool) -> float:
    """Largest minus smallest fine-tuned accuracy (points) over the strategies."""
    values = [measured(name, quick)["finetune_acc"] for name in STRATEGIES]
    return max(values) - min(values)


def bert_beats_rnd(quick: bool) -> float:
    """1.0 if BERT's 80/10/10 fine-tunes better than RND alone (0/0/100), else 0.0."""
    return float(measured("bert", quick)["finetune_acc"] > measured("rnd", quick)["finetune_acc"])


def _raw(name: str, metric: str, quick: bool) -> float:
    return measured(name, quick)[metric]


_KEY = f"{config_key(PRETRAIN)} {config_key(FINETUNE)} {sorted(STRATEGIES.items())}"


def _finetune_label(strategy: Strategy) -> str:
    return f"{strategy.label}: fine-tuned division accuracy (%) (paper MNLI {strategy.paper_mnli:g})"


def _raw_rows(*names: str) -> list[Row]:
    """Our masked-token and fine-tuned accuracies of each strategy in ``names``."""
    rows = []
    for name in names:
        strategy = STRATEGIES[name]
        rows.append(Row(f"{strategy.label}: masked-token accuracy (%)", None, 0.0, OURS,
                        functools.partial(_raw, name, "mlm_acc"), key=_KEY, model="bert_tiny"))
        rows.append(Row(_finetune_label(strategy), None, 0.0, OURS, functools.partial(_raw, name, "finetune_acc"),
                        key=_KEY, model="bert_tiny_classifier"))
    return rows


_PAPER_SPREAD = max(s.paper_mnli for s in STRATEGIES.values()) - min(s.paper_mnli for s in STRATEGIES.values())

TABLE = Table(
    name="bert_masking",
    title="BERT's masking strategies (MASK/SAME/RND, Table 8): BERT-Tiny pre-trained on the English Bible with each, "
    "masked-token accuracy and fine-tuned Bible-division accuracy",
    unit="points, 1 = yes, or as labelled",
    # Rows are measured in order, and each is cached when measured: BERT's strategy and RND alone first, so a run
    # stopped part-way keeps the comparison that needs the fewest runs.
    rows=[
        *_raw_rows("bert", "rnd"),
        Row("80/10/10 fine-tunes better than RND alone, 0/0/100 (1 = yes)", 1.0, 0.5, PAPER, bert_beats_rnd,
            key=_KEY),
        *_raw_rows("mask", "mask_rnd", "mask_same", "same_rnd"),
        Row("fine-tuning robust to the strategy: spread (max - min) of fine-tuned accuracy (points)",
            round(_PAPER_SPREAD, 2), SPREAD_TOLERANCE, PAPER, spread, key=_KEY),
    ],
    notes="Ours: BERT-Tiny (L 2, H 128, A 2) pre-trained for 500 steps of 32 x 128 tokens with each strategy "
    "(configs/bert/bible_bert_tiny.yaml; BERT-Base: 1M steps of 256 x 512), the same seed and data order for all "
    "six; masked-token accuracy is top-1 on the selected tokens of the held-out test verses, masked once with "
    "BERT's 80/10/10 for every strategy (so a strategy without [MASK] meets [MASK] for the first time there). "
    "Fine-tuning: half an epoch (437 steps of 32 verses), ten Bible divisions "
    "(configs/bert/bible_bert_tiny_division.yaml), the best of four validations tested on 1,554 held-out verses "
    "(23.4% by always answering the largest division). One seed a strategy: the spread row's tolerance allows for "
    "that noise (its paper figure is MNLI's, 84.4 - 83.6). NER and the feature-based column have no counterpart "
    "here. Measured (2026-11-29): 500 steps are too few for the paper's regime. The strategies without SAME "
    "(100/0/0, 80/0/20, 0/0/100) were still on the unigram plateau (masked-token accuracy 6.87%, exactly the "
    "most-frequent-token baseline, test/unigram_acc; fine-tuned 31.0-36.0%), while all three with SAME (80/10/10, "
    "80/20/0, 0/20/80) had left it (13.5-15.6%; fine-tuned 38.4-42.7%): kept tokens give an early, easy signal "
    "(copy the input). "
    "Part of their masked-token lead is that signal itself, since the 80/10/10 evaluation keeps 10% of the "
    "targets unchanged. So at this scale the strategy changes when pre-training gets going, far beyond the "
    "paper's 0.8-point spread; the paper's robustness is a claim about converged pre-training.",
    digits=2,
    # Wall time of the full run on 2 shared cores with about nine other jobs (about 14 CPU minutes, one thread).
    minutes=62,
    plot=functools.partial(
        two_panels,
        rows={_finetune_label(s): (f"MASK/SAME/RND {s.label}", s.paper_mnli) for s in STRATEGIES.values()},
        paper_label="paper: MNLI dev accuracy (%), BERT-Base fine-tuned",
        ours_label="ours: Bible-division test accuracy (%), BERT-Tiny fine-tuned",
    ),
)
