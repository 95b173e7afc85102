"""Property-based tests of the image-list readers of user datasets: split files and CSV lists.

Arbitrary bytes give a DataError naming the file, never another exception; a list that is
accepted holds exactly the (path, label) lines the file has.
"""

from __future__ import annotations

from fuzz_settings import examples
from hypothesis import example, given
from hypothesis import strategies as st

from camlt.data.owndata import read_csv_list
from camlt.data.sources import DataError
from camlt.data.splitfile import read_split_file

FAST = examples(200)
names = st.text(
    st.characters(blacklist_categories=["Cc", "Cs", "Zl", "Zp"]), min_size=1, max_size=12
)
label_text = st.integers(-5, 2**70).map(str) | st.text(max_size=4)


def read_or_data_error(read, path):
    try:
        return read(path)
    except DataError as err:
        assert path.name in str(err)
        return None


@FAST
@given(raw=st.binary(max_size=300))
@example(raw=b"a.png 99999999999999999999999\n")  # an int64 cannot hold that label
@example(raw=b"\xff\xfe")
def test_arbitrary_split_file_bytes_give_a_list_or_data_error(raw, tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(raw)
    split = read_or_data_error(read_split_file, path)
    if split is not None:
        assert len(split.paths) == len(split.labels) > 0


@FAST
@given(rows=st.lists(st.tuples(names, label_text), min_size=1, max_size=6))
def test_split_file_lines_are_read_exactly_or_refused(rows, tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("".join(f"{p} {lab}\n" for p, lab in rows), encoding="utf-8")
    split = read_or_data_error(read_split_file, path)
    if split is None:
        return
    kept = [(p.strip(), int(lab)) for p, lab in rows if p.strip() and not p.strip().startswith("#")]
    assert list(zip(split.paths, split.labels.tolist(), strict=True)) == kept


@FAST
@given(raw=st.binary(max_size=300))
@example(raw=b"a.png,99999999999999999999999\n")
@example(raw=b'"a.png,1\n')  # an unclosed quote
def test_arbitrary_csv_bytes_give_a_list_or_data_error(raw, tmp_path):
    path = tmp_path / "list.csv"
    path.write_bytes(raw)
    listing = read_or_data_error(read_csv_list, path)
    if listing is not None:
        assert len(listing.paths) == len(listing.labels) > 0
        assert listing.labels.min() >= 0 or listing.classes is None
