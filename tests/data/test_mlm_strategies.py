"""BERT's masking strategies (Devlin et al. 2019, Table 8) as options of the MLM collator and datamodule.

The training batches follow ``mask_token_prob`` / ``random_token_prob`` (the rest of the selected tokens stay);
the evaluation sets keep BERT's 80/10/10 whatever the strategy, so masked-token accuracies compare.
"""

import pytest
import torch
from test_mlm_data import SPECIAL, VOCAB, datamodule

from research.data import MaskedLanguageModellingCollator
from research.data.mlm import IGNORE_INDEX
from research.data.text import EMBEDDED_BIBLE, read_tsv


def _shares(batch, ids):
    selected = batch["labels"] != IGNORE_INDEX
    inputs, original = batch["input_ids"][selected], ids[selected]
    mask = (inputs == SPECIAL.mask).float().mean().item()
    same = (inputs == original).float().mean().item()
    return mask, same, 1 - mask - same, int(selected.sum())


@pytest.mark.parametrize("mask, random", [(0.8, 0.1), (1.0, 0.0), (0.8, 0.0), (0.0, 0.8), (0.0, 1.0)])
def test_the_collator_splits_the_selected_tokens_as_asked(mask, random):
    ids = torch.randint(5, VOCAB, (100, 200), generator=torch.Generator().manual_seed(0))
    examples = [{"input_ids": row, "token_type_ids": torch.zeros_like(row)} for row in ids]
    collate = MaskedLanguageModellingCollator(special=SPECIAL, vocab_size=VOCAB, mask_token_prob=mask,
                                              random_token_prob=random, generator=torch.Generator().manual_seed(1))
    got_mask, got_same, got_random, n = _shares(collate(examples), ids)
    same = 1 - mask - random
    # a random replacement is the token itself with probability 1 / VOCAB; 5 standard deviations: a failure is a bug
    for got, expected in ((got_mask, mask), (got_random, random * (1 - 1 / VOCAB)), (got_same, same + random / VOCAB)):
        assert abs(got - expected) <= 5 * (expected * (1 - expected) / n) ** 0.5 + 1e-9
    if mask == 1.0:
        assert got_mask == 1.0  # exactly: no selected token escapes [MASK]
    if mask == 0.0:
        assert got_mask == 0.0


def test_the_default_is_berts_80_10_10():
    collate = MaskedLanguageModellingCollator(special=SPECIAL, vocab_size=VOCAB)
    assert (collate.mask_token_prob, collate.random_token_prob) == (0.8, 0.1)


def test_the_datamodule_masks_training_batches_with_the_strategy_and_evaluation_with_berts(tmp_path):
    corpus = tmp_path / "verses.txt"
    corpus.write_text("\n".join(english for english, _ in read_tsv(EMBEDDED_BIBLE)[:600]), encoding="utf-8")
    rnd = datamodule(corpus, tmp_path, mask_token_prob=0.0, random_token_prob=1.0)
    bert = datamodule(corpus, tmp_path)
    rnd.setup("fit")
    bert.setup("fit")
    torch.manual_seed(0)
    train = next(iter(torch.utils.data.DataLoader(rnd.train_set, batch_size=64, collate_fn=rnd.collate("train"))))
    assert (train["labels"] != IGNORE_INDEX).any() and not (train["input_ids"] == SPECIAL.mask).any()
    for split in ("val_dataloader", "test_dataloader"):  # the same masked examples for every strategy
        a, b = next(iter(getattr(rnd, split)())), next(iter(getattr(bert, split)()))
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert (a["input_ids"] == SPECIAL.mask).any()


@pytest.mark.parametrize("mask, random", [(0.9, 0.2), (-0.1, 0.1), (0.5, 1.5)])
def test_proportions_that_are_not_a_split_say_so(tmp_path, mask, random):
    with pytest.raises(ValueError, match="must be probabilities summing to at most 1 .*BERT uses 0.8 and 0.1"):
        datamodule(tmp_path / "unread.txt", tmp_path, mask_token_prob=mask, random_token_prob=random)
