import pytest

from research.models import list_models
from research.reproduce import TABLES, run_table, to_markdown

TABLE = TABLES["complexity"]


@pytest.mark.parametrize("row", TABLE.rows, ids=lambda r: r.label)
def test_every_row_within_its_tolerance(row):
    if row.model not in list_models():
        pytest.skip(f"{row.model} is not implemented yet")
    ours = row.measure(False)
    assert abs(ours - row.paper) <= row.tolerance, f"{row.label}: ours {ours:.3f} vs paper {row.paper}"


def test_a_failing_row_is_reported_not_dropped():
    broken = type(TABLE)(
        name="t",
        title="t",
        unit="u",
        rows=[TABLE.rows[0], TABLE.rows[0].__class__("broken", 1.0, 0.1, "nowhere", lambda quick: 1 / 0)],
    )
    results = run_table(broken)
    assert [r.label for r in results] == [TABLE.rows[0].label, "broken"]
    assert results[1].error == "ZeroDivisionError: division by zero" and not results[1].ok
    assert "| broken | 1.00 | failed: ZeroDivisionError" in to_markdown(broken, results)
