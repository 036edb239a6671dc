import json

import pytest

from research.models import list_models
from research.reproduce import TABLES, Row, Table, run_table
from research.reproduce.__main__ import main


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
