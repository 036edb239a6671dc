"""BibleVersesDataModule: shipped labels aligned with the corpus, the pre-training's tokenizer, BERT inputs."""

import collections
import gzip

import pytest
import torch
import yaml

from research.data import BibleVersesDataModule, MaskedLanguageModellingDataModule
from research.data.bible_verses import (
    DIVISIONS,
    EMBEDDED_REFERENCES,
    labelled_verses,
    pretraining_data,
)
from research.data.text import EMBEDDED_BIBLE, text_corpus

# the class counts of research/data/embedded/README.md (and /work/shared's), one verse a corpus line
DIVISION_COUNTS = {"law": 5850, "history": 7015, "wisdom": 4776, "major_prophets": 4440, "minor_prophets": 1048,
                   "gospels": 3778, "acts": 1003, "pauline_epistles": 2029, "general_epistles": 734, "revelation": 404}


def test_the_shipped_labels_describe_every_corpus_line():
    verses = labelled_verses(EMBEDDED_BIBLE, EMBEDDED_REFERENCES, "division")
    assert len(verses) == 31_077
    counts = collections.Counter(DIVISIONS[label] for _, label in verses)
    assert counts == DIVISION_COUNTS
    assert verses[0] == ("In the beginning, God created the heavens and the earth.", 0)  # Genesis 1:1, law
    assert verses[-1][1] == DIVISIONS.index("revelation")
    # divisions come in canonical order: the labels never go back
    assert all(a[1] <= b[1] for a, b in zip(verses, verses[1:]))
    testaments = collections.Counter(label for _, label in labelled_verses(EMBEDDED_BIBLE, EMBEDDED_REFERENCES,
                                                                           "testament"))
    assert testaments == {0: 23_129, 1: 7_948}


def test_files_that_disagree_are_one_line_error(tmp_path):
    corpus, references = tmp_path / "verses.tsv", tmp_path / "refs.tsv"
    corpus.write_text("a\tb\nc\td\ne\tf\n")
    references.write_text("testament\tdivision\tbook\tchapter\tverse\not\tlaw\tGenesis\t1\t1\not\tlaw\tGenesis\t1\t2\n")
    with pytest.raises(ValueError, match=r"verses.tsv has 3 verses but .*refs.tsv describes 2: the reference file "
                                         "must have one row per corpus line"):
        labelled_verses(corpus, references, "division")
    with pytest.raises(ValueError, match="give both corpus and references"):
        BibleVersesDataModule(corpus=str(corpus))
    with pytest.raises(ValueError, match="unknown label 'book'"):
        BibleVersesDataModule(label="book")


def test_the_test_verses_are_the_ones_the_mlm_pretraining_holds_out(small):
    dm = BibleVersesDataModule(tokenizer=small["tokenizer"])  # the embedded Bible
    held_out = text_corpus(max_words=None)  # the MLM datamodule's split with its default fractions and seed
    assert [text for text, _ in dm.verses.test] == held_out.test
    assert [text for text, _ in dm.verses.val] == held_out.val
    assert len(dm.verses.test) == 1_554
    # every division is in every split (a verse-level split; a book-level one would lose whole classes)
    for split in (dm.verses.train, dm.verses.val, dm.verses.test):
        assert {label for _, label in split} == set(range(10))


@pytest.fixture
def small(tmp_path):
    """Six verses, their labels and a 16-token WordPiece vocabulary."""
    corpus, references, vocab = tmp_path / "verses.tsv.gz", tmp_path / "refs.tsv", tmp_path / "vocab.txt"
    texts = ["in the beginning", "god said", "the light", "and the earth", "said the lord god", "in the light"]
    with gzip.open(corpus, "wt") as f:
        f.writelines(f"{text}\tx\n" for text in texts)
    rows = ["ot\tlaw", "ot\thistory", "nt\tgospels", "nt\tacts", "nt\tgospels", "ot\tlaw"]
    references.write_text("testament\tdivision\tbook\tchapter\tverse\n" + "".join(f"{r}\tB\t1\t1\n" for r in rows))
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "in", "the", "beginning", "god", "said",
                                "light", "and", "earth", "lord"]) + "\n")
    return dict(corpus=str(corpus), references=str(references), tokenizer=str(vocab))


def test_batches_are_cls_verse_sep_padded_with_the_pad_id(small):
    dm = BibleVersesDataModule(**small, val_fraction=0.2, test_fraction=0.2, batch_size=4, max_length=4)
    assert (dm.num_classes, dm.vocab_size, dm.pad_id) == (10, 14, 0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"tokens", "lengths", "labels"} and batch["tokens"].dtype == torch.long
    cls, sep = dm.special_tokens.cls, dm.special_tokens.sep
    for row, length in zip(batch["tokens"], batch["lengths"]):
        assert row[0] == cls and row[length - 1] == sep and (row[length:] == dm.pad_id).all()
        assert length <= 4  # cut to max_length, [SEP] kept
    assert dm.batch(["said the lord god"])["tokens"].tolist() == [[cls, 9, 6, sep]]
    testament = BibleVersesDataModule(**small, label="testament", val_fraction=0.2, test_fraction=0.2)
    assert testament.num_classes == 2 and testament.class_names == ("ot", "nt")


def test_the_tokenizer_of_a_pretraining_run_is_read_from_its_config(small, tmp_path):
    run = tmp_path / "checkpoints" / "bert" / "mlm"
    run.mkdir(parents=True)
    data = {"class_path": "research.data.MaskedLanguageModellingDataModule",
            "init_args": {"tokenizer": small["tokenizer"], "vocab_size": 8000}}
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    dm = BibleVersesDataModule(tokenizer_of=str(run / "last.ckpt"))
    assert dm.tokenizer.get_vocab() == pretraining_data(run).tokenizer.get_vocab() and dm.vocab_size == 14
    with pytest.raises(FileNotFoundError, match="pre-train first with python -m research fit --config "
                                                "configs/bert/bible_bert_tiny.yaml"):
        BibleVersesDataModule(tokenizer_of=str(tmp_path / "nowhere" / "last.ckpt"))
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"class_path": "research.data.EmbeddedMNISTDataModule"}}))
    with pytest.raises(ValueError, match="is not a masked-language-model run"):
        BibleVersesDataModule(tokenizer_of=str(run))


def test_by_default_the_tokenizer_is_the_mlm_pretrainings(tmp_path):
    """The same BPE vocabulary as configs/bert/bible_bert_tiny.yaml's datamodule trains (one training, cached)."""
    cache = str(tmp_path / "tokenizers")
    dm = BibleVersesDataModule(cache_dir=cache)
    mlm = MaskedLanguageModellingDataModule(vocab_size=8000, cache_dir=cache)
    assert dm.tokenizer.to_str() == mlm.tokenizer.to_str()
    assert (dm.vocab_size, dm.pad_id) == (mlm.vocab_size, mlm.special_tokens.pad)
    ids = dm.encode(["In the beginning, God created the heavens and the earth."])[0]
    assert ids.tolist() == mlm.tokenizer.encode("In the beginning, God created the heavens and the earth.").ids


def test_a_pretraining_on_another_corpus_is_warned_about_and_on_the_same_one_not(small, tmp_path, caplog):
    """The MLM run's held-out lines are this datamodule's test verses when it read the same corpus (issue 17)."""
    run = tmp_path / "mlm"
    run.mkdir()

    def pretrained_on(corpus):
        args = {"tokenizer": small["tokenizer"]} | ({} if corpus is None else {"corpus": corpus})
        (run / "config.yaml").write_text(yaml.safe_dump({"data": {"class_path": "research.data."
                                                                  "MaskedLanguageModellingDataModule",
                                                                  "init_args": args}}))
        return run / "last.ckpt"

    def warned(pretraining_corpus, **data) -> bool:
        caplog.clear()
        BibleVersesDataModule(tokenizer_of=str(pretrained_on(pretraining_corpus)), **data)
        return "held out other lines than this datamodule's test verses" in caplog.text

    same_file = dict(corpus=small["corpus"], references=small["references"])
    assert not warned(None)  # both the embedded Bible
    assert not warned(small["corpus"], **same_file)  # both the same file
    assert warned(small["corpus"])  # the embedded Bible's verses, pre-trained on another corpus
    assert warned(None, **same_file)
