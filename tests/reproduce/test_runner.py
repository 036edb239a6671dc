import json
import sys

import pytest

from research.commands.reproduce import main
from research.models import list_models
from research.reproduce import TABLES, Row, Table, run_table


@pytest.fixture(autouse=True)
def _checkpoints_in_tmp(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs write checkpoints/ under the working directory


def test_list_names_every_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in TABLES)


@pytest.mark.parametrize("name", list(TABLES))
def test_every_table_runs_quick_and_writes_json(name, tmp_path, capsys):
    main([name, "--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / f"{name}-quick.json").read_text())
    assert len(saved["rows"]) == len(TABLES[name].rows)
    for row, spec in zip(saved["rows"], TABLES[name].rows):
        assert row["label"] in printed
        if spec.model is None or spec.model in list_models():
            assert row["error"] is None, row


def test_finished_runs_are_cached(tmp_path):
    calls = []

    def measure(quick):
        calls.append(quick)
        return 0.5

    table = Table(name="t", title="t", unit="u", rows=[Row("r", 0.5, 0.1, "s", measure, key="k")])
    first = run_table(table, out=tmp_path)
    second = run_table(table, out=tmp_path)
    assert calls == [False] and second[0].cached and second[0].ours == first[0].ours == 0.5
    run_table(table, out=tmp_path, quick=True)  # quick results are kept apart
    assert calls == [False, True]


def test_unknown_table_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["complexty"])
    assert "unknown table 'complexty'" in capsys.readouterr().err


def test_figures_outside_report_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["madry", "--figures", "docs"])
    assert "--figures goes with 'report'" in capsys.readouterr().err


PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", [name for name, table in TABLES.items() if table.plot is not None])
def test_tables_with_a_picture_write_a_png(name, tmp_path, capsys):
    main([name, "--quick", "--out", str(tmp_path)])  # memoised: shares the quick runs of the test above
    assert (tmp_path / f"{name}-quick.png").read_bytes().startswith(PNG)
    assert f"plot: {tmp_path / f'{name}-quick.png'}" in capsys.readouterr().err


def _small_table(plot) -> Table:
    rows = [Row("a", 90.0, 5.0, "s", lambda quick: 88.0, key="a"),
            Row("b", 50.0, 5.0, "s", lambda quick: 1 / 0, key="b"),  # fails: drawn as failed, not dropped
            Row("c", None, 0.0, "ours", lambda quick: 3.0, key="c")]
    return Table(name="small", title="a small table", unit="%", rows=rows, plot=plot)


def test_report_links_the_plots_it_draws_and_marks_rows_not_run(monkeypatch, tmp_path, capsys):
    from research.commands import reproduce as runner
    from research.reproduce.plots import paper_vs_ours

    monkeypatch.setattr(runner, "TABLES", {"small": _small_table(paper_vs_ours)})
    assert main(["report", "--out", str(tmp_path), "--figures", str(tmp_path / "figures")]) == 0
    printed = capsys.readouterr().out
    assert "not run yet: python -m research reproduce small" in printed  # nothing cached, nothing trained
    assert f"![small]({(tmp_path / 'figures' / 'small.png').as_posix()})" in printed
    assert (tmp_path / "figures" / "small.png").read_bytes().startswith(PNG)


def test_without_matplotlib_the_table_is_still_written_and_says_why_no_plot(monkeypatch, tmp_path, capsys):
    from research.commands import reproduce as runner
    from research.reproduce.plots import paper_vs_ours

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setattr(runner, "TABLES", {"small": _small_table(paper_vs_ours)})
    assert main(["small", "--out", str(tmp_path)]) == 1  # row b failed
    assert json.loads((tmp_path / "small.json").read_text())["rows"][1]["error"].startswith("ZeroDivisionError")
    assert not (tmp_path / "small.png").exists()
    assert "pip install 'research[plots]'" in capsys.readouterr().err


def test_rows_not_run_say_so_and_are_not_judged(monkeypatch, tmp_path, capsys):
    from research.commands import reproduce as runner

    monkeypatch.setattr(runner, "TABLES", {"small": _small_table(None)})
    assert main(["report", "--out", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| a ")]
    assert rows == ["| a | 90.00 | not run yet: python -m research reproduce small | | not run | s |"]


def test_quick_output_says_quick_and_gives_no_spread_for_one_seed(monkeypatch, tmp_path, capsys):
    from research.commands import reproduce as runner
    from research.reproduce.runs import over_seeds

    monkeypatch.setattr("research.reproduce.runs.fit_and_test", lambda config, overrides, quick: {"acc": 0.5})
    assert over_seeds("c.yaml", (), "acc", seeds=3, quick=True) == (50.0, None)
    table = Table(name="seeds", title="mean ± std over 3 seeds", unit="%",
                  rows=[Row("x", 50.0, 5.0, "s", lambda quick: over_seeds("c.yaml", (), "acc", 3, quick=quick))])
    monkeypatch.setattr(runner, "TABLES", {"seeds": table})
    assert main(["seeds", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "quick settings: one seed" in printed
    assert "| x | 50.00 | 50.00 | +0.00 | yes (±5) | s |" in printed  # no "± 0.00" spread of one seed


def test_results_record_the_machine_and_the_report_names_it(monkeypatch, tmp_path, capsys):
    import os

    import torch

    from research.commands import reproduce as runner
    from research.reproduce.table import describe_machine, machine

    assert not any("core" in table.title for table in TABLES.values())  # the machine is in the results, not a title
    monkeypatch.setattr(runner, "TABLES", {"small": _small_table(None)})
    assert main(["small", "--out", str(tmp_path)]) == 1  # row b failed
    here = machine()
    assert here["cores"] == os.cpu_count() and here["torch_threads"] == torch.get_num_threads() and here["cpu"]
    saved = json.loads((tmp_path / "small.json").read_text())
    assert [row["machine"] for row in saved["rows"]] == [here] * 3
    capsys.readouterr()
    assert main(["report", "--out", str(tmp_path)]) == 0  # from the cache: the two rows that ran
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("Generated by `python -m research reproduce report` from the cached runs (")
    assert header.endswith(f"measured on: {describe_machine(here)} (2 rows).")
