import gzip

import pytest

from research.data.text import (
    EMBEDDED_BIBLE,
    filter_pairs,
    parallel_corpus,
    read_lines,
    read_tsv,
    split_items,
    text_corpus,
)


def test_embedded_bible_ships_with_the_package():
    rows = read_tsv(EMBEDDED_BIBLE)
    assert len(rows) == 31_077
    assert rows[0] == (
        "In the beginning, God created the heavens and the earth.",
        "EN el principio crió Dios los cielos y la tierra.",
    )


def test_parallel_corpus_filters_outliers_and_splits_reproducibly():
    splits = parallel_corpus()
    pairs = [p for split in (splits.train, splits.val, splits.test) for p in split]
    assert 30_000 < len(pairs) < 31_077  # the appendix and the misaligned verses are gone
    assert max(len(s.split()) for pair in pairs for s in pair) <= 100
    assert all(max(len(a.split()), len(b.split())) <= 3 * min(len(a.split()), len(b.split())) for a, b in pairs)
    assert 0.04 < len(splits.test) / len(pairs) < 0.06 and 0.04 < len(splits.val) / len(pairs) < 0.06
    again = parallel_corpus()
    assert again.test == splits.test and again.val == splits.val


def test_text_corpus_default_is_the_english_side():
    english = text_corpus()
    parallel = parallel_corpus(max_words=200, max_ratio=1000)
    assert english.test[:50] == [source for source, _ in parallel.test[:50]]
    assert all(len(line.split()) <= 200 for line in english.train)
    assert sum(map(len, (english.train, english.val, english.test))) == 31_076  # only the 3,045-word appendix goes


def test_split_is_disjoint_in_corpus_order_and_test_ignores_seed():
    items = [f"line {i}" for i in range(200)]
    a = split_items(items, val_fraction=0.1, test_fraction=0.1, seed=0)
    b = split_items(items, val_fraction=0.1, test_fraction=0.1, seed=1)
    assert sorted(a.train + a.val + a.test) == sorted(items)
    assert len(set(a.train) | set(a.val) | set(a.test)) == 200
    assert (len(a.val), len(a.test)) == (20, 20)
    for split in (a.train, a.val, a.test):
        assert split == sorted(split, key=items.index)
    assert a.test == b.test and a.val != b.val


def test_split_errors():
    with pytest.raises(ValueError, match="leave lines for training"):
        split_items(list(range(10)), val_fraction=0.5, test_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="3 lines are too few"):
        split_items(list(range(3)), val_fraction=0.1, test_fraction=0.1, seed=0)


def test_filter_pairs_by_length_and_ratio():
    pairs = [("a b c", "x y z"), ("a", "x y z w"), ("a " * 101, "x " * 101), ("a b", "x y z w q r s")]
    assert filter_pairs(pairs, max_words=100, max_ratio=3.0) == [("a b c", "x y z")]
    assert len(filter_pairs(pairs, max_words=200, max_ratio=4.0)) == 4
    assert filter_pairs(pairs, min_words=3, max_words=200, max_ratio=1.0) == [pairs[0], pairs[2]]
    with pytest.raises(ValueError, match="max_ratio >= 1"):
        filter_pairs(pairs, max_ratio=0.5)


def test_user_text_and_tsv_files(tmp_path):
    text = tmp_path / "book.txt"
    text.write_text("first line\n\n  second line  \n" + "".join(f"more {i}\n" for i in range(40)))
    table = tmp_path / "pairs.tsv.gz"
    with gzip.open(table, "wt", encoding="utf-8") as f:
        f.write("".join(f"english {i}\tespañol {i}\n" for i in range(40)))
    assert read_lines(text)[:2] == ["first line", "second line"]
    corpus = text_corpus([str(text), str(table)], tsv_column=1, val_fraction=0.1, test_fraction=0.1)
    lines = corpus.train + corpus.val + corpus.test
    assert len(lines) == 82 and "second line" in lines and "español 7" in lines and "english 7" not in lines
    pairs = parallel_corpus(table, val_fraction=0.1, test_fraction=0.1)
    assert ("english 3", "español 3") in pairs.train + pairs.val + pairs.test


def test_tsv_line_with_wrong_columns_names_the_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("one\tuno\ntwo\tdos\nthree\ttres\textra\n")
    with pytest.raises(ValueError, match=r"bad.tsv:3: expected 2 tab-separated columns, found 3"):
        read_tsv(path)
    with pytest.raises(ValueError, match=r"bad.tsv:3"):
        text_corpus(path)


def test_missing_or_empty_corpus_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt' does not exist"):
        text_corpus(tmp_path / "nowhere.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parallel_corpus(tmp_path / "nowhere.tsv")
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match="empty.txt' is empty"):
        text_corpus(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="empty.tsv' is empty"):
        parallel_corpus(tmp_path / "empty.tsv")
    with pytest.raises(ValueError, match="tsv_column must be 0 or 1"):
        text_corpus(tsv_column=2)
