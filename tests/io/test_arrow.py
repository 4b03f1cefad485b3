"""numpy columns to Arrow without pandas: values, strings, booleans, and no pandas import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from driftwatch.io.arrow import as_strings, column_to_arrow, strings_to_arrow


@pytest.mark.parametrize("values", [np.arange(11, dtype=np.int32), np.linspace(0, 1, 9),
                                    np.array([np.nan, 1.5], np.float32),
                                    np.arange(5, dtype=np.uint16)])
def test_numbers_round_trip_with_their_dtype(values):
    arr = column_to_arrow(values)
    assert arr.type == pa.from_numpy_dtype(values.dtype)
    np.testing.assert_array_equal(arr.to_numpy(), values)


def test_booleans_are_bit_packed_in_arrow_order():
    rng = np.random.default_rng(3)
    flags = rng.random(37) > 0.5                     # not a multiple of 8
    assert column_to_arrow(flags).to_pylist() == flags.tolist()


def test_strings_none_empty_and_non_ascii():
    col = np.array(["S4-0001", None, "", "Ωmega-é", "N4"], dtype=object)
    arr, width = strings_to_arrow(as_strings(col))
    assert arr.to_pylist() == ["S4-0001", "", "", "Ωmega-é", "N4"]
    assert width == 7
    assert column_to_arrow(np.array(["a", "bc"])).to_pylist() == ["a", "bc"]
    assert column_to_arrow(np.zeros(0, dtype=object)).to_pylist() == []


def test_bad_columns_are_refused():
    with pytest.raises(ValueError, match="1-d"):
        column_to_arrow(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="unsupported"):
        column_to_arrow(np.array([1 + 2j]))


def test_writing_a_product_table_does_not_import_pandas(tmp_path):
    # pandas costs a worker ~50 MB of resident memory: the product writer must not load it
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from driftwatch.io.products import write_table\n"
        f"write_table(Path({str(tmp_path / 't.parquet')!r}), {{'id': np.array(['a', None], "
        "dtype=object), 'f': np.ones(2), 'ok': np.ones(2, bool)}, {'v': 1})\n"
        "print('pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
    import pandas as pd

    df = pd.read_parquet(tmp_path / "t.parquet")
    assert df["id"].tolist() == ["a", ""] and df["ok"].tolist() == [True, True]


@pytest.mark.parametrize("values", [
    [None, "a", "a", "é", "é", "é", None, None, ""], ["x", "y"], [], ["solo"],
    ["G1"] * 40 + [None] * 40 + ["ÿü"] * 40,
])
def test_object_to_arrow_is_strings_to_arrow(values) -> None:
    """Runs converted once give the array and width of converting every value."""
    from driftwatch.io.arrow import as_strings, object_to_arrow, strings_to_arrow

    for col in (np.array(values, dtype=object), np.array([v or "" for v in values], dtype=str)):
        got, width = object_to_arrow(col)
        want, want_width = strings_to_arrow(as_strings(col))
        assert got.type == want.type and got.equals(want) and width == want_width
