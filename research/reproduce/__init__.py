"""The papers' tables, printed beside ours: ``python -m research reproduce list | report | TABLE [--quick]``.

Each table is data (research/reproduce/<table>.py): the paper's rows with their numbers, a citation
and a tolerance, and how ours is measured. Every paper number the code claims to match lives here.
:mod:`research.reproduce.table` measures and caches a table's rows, :mod:`research.reproduce.runs`
trains and attacks the runs behind them, :mod:`research.reproduce.report` saves and reports the
results; the command (:mod:`research.commands.reproduce`) only parses its arguments and prints.
"""

from research.reproduce import (
    batchnorm,
    bert_masking,
    catastrophic_overfitting,
    complexity,
    goodfellow,
    madry,
    mae_design,
    mae_mask_ratio,
    resnet_degradation,
    seq2seq,
    swin_ablation,
    text_adversarial,
    transformer_variants,
    vit_attention_distance,
    vit_vs_resnet,
    wong,
)
from research.reproduce.table import Result, Row, Table, run_table, to_markdown

TABLES: dict[str, Table] = {t.name: t for t in (
    complexity.TABLE,
    batchnorm.TABLE,
    madry.TABLE,
    goodfellow.TABLE,
    wong.TABLE,
    catastrophic_overfitting.TABLE,
    mae_mask_ratio.TABLE,
    vit_vs_resnet.TABLE,
    seq2seq.TABLE,
    transformer_variants.TABLE,
    swin_ablation.TABLE,
    bert_masking.TABLE,
    text_adversarial.TABLE,
    mae_design.TABLE,
    resnet_degradation.TABLE,
    vit_attention_distance.TABLE,
)}

__all__ = ["TABLES", "Result", "Row", "Table", "run_table", "to_markdown"]
