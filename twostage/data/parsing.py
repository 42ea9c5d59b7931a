"""Reading MovieLens text files into string tables, with errors that name the file and line."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from twostage.errors import DataFormatError


def read_text(path: Path, *, encoding: str, what: str) -> tuple[str, bytes]:
    """The decoded text of `path` (CRLF → LF, trailing blank lines dropped) and its raw bytes.

    `encoding="ascii"` is strict: a byte ≥ 128 is reported with its line. Latin-1 decodes every
    byte, so for latin-1 files only NUL bytes (a binary file) are refused.
    """
    if not path.is_file():
        raise DataFormatError(path, f"file not found; expected the {what} file here")
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise DataFormatError(path, f"undecodable bytes (NUL); expected {encoding} text", line)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataFormatError(
            path, f"undecodable byte 0x{raw[err.start]:02x}; expected {encoding} text", line
        ) from None
    text = text.replace("\r\n", "\n").rstrip("\n")
    if not text:
        raise DataFormatError(path, f"the file is empty; expected the {what} file")
    return text, raw


def split_fields(path: Path, text: str, *, sep: str, names: list[str]) -> pd.DataFrame:
    """Split `text` into exactly `len(names)` string columns per line, separated by `sep`.

    Row i of the result is line i + 1 of the file. A line with fewer or more fields raises
    `DataFormatError` naming that line.
    """
    n_fields = len(names)
    if sep != "\t":
        if "\t" in text:
            line = text.count("\n", 0, text.index("\t")) + 1
            raise DataFormatError(
                path, f"found a tab; expected {n_fields} fields separated by {sep!r}", line
            )
        text = text.replace(sep, "\t")
    try:
        table = pd.read_csv(
            io.StringIO(text),
            sep="\t",
            header=None,
            names=list(range(n_fields + 1)),
            dtype=str,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_filter=True,
            na_values=[],
            skip_blank_lines=False,
            engine="c",
        )
    except pd.errors.ParserError as err:
        match = re.search(r"line (\d+), saw (\d+)", str(err))
        line = int(match.group(1)) if match else None
        saw = f"found {match.group(2)}" if match else "found more"
        raise DataFormatError(
            path, f"{saw} fields; expected {n_fields} separated by {sep!r}", line
        ) from None
    counts = _fields_per_line(text, len(table))
    bad = np.flatnonzero(counts != n_fields)
    if bad.size:
        row = int(bad[0])
        found = int(counts[row])
        raise DataFormatError(
            path,
            f"found {found} field{'s' if found != 1 else ''}; expected {n_fields} "
            f"({sep.join(names)}) separated by {sep!r}",
            row + 1,
        )
    table = table.iloc[:, :n_fields]
    table.columns = names
    return table


def _fields_per_line(text: str, n_lines: int) -> np.ndarray:
    """Number of tab-separated fields on each line, counted on the bytes (no loop over lines)."""
    codes = np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    # A tab's line is the number of newlines before it: positions only, not a running count per
    # byte (an int64 per byte was 8x the file, 670 MB for 3M ratings).
    newlines = np.flatnonzero(codes == ord("\n"))
    line_of_tab = np.searchsorted(newlines, np.flatnonzero(codes == ord("\t")))
    tabs = np.bincount(line_of_tab, minlength=n_lines)
    return tabs[:n_lines] + 1


def integer_column(path: Path, table: pd.DataFrame, name: str) -> np.ndarray:
    """Column `name` parsed as int64; a non-integer value raises `DataFormatError` with its line."""
    column = table[name]
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna().to_numpy() | (values.to_numpy(dtype=float, na_value=np.nan) % 1 != 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(
            path, f"field {name} is {column.iloc[row]!r}; expected an integer", row + 1
        )
    return values.to_numpy(dtype=np.int64)


def check_unique_ids(path: Path, ids: np.ndarray, name: str) -> None:
    """Raise `DataFormatError` at the first repeated id."""
    duplicated = pd.Index(ids).duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise DataFormatError(
            path, f"{name} {ids[row]} appears twice; expected unique ids", row + 1
        )


def lookup_rows(
    path: Path, ids: np.ndarray, known_ids: np.ndarray, name: str, other_file: str
) -> np.ndarray:
    """Row index in `known_ids` of each id; an unknown id raises `DataFormatError` with its line."""
    rows = pd.Index(known_ids).get_indexer(ids)
    missing = rows < 0
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataFormatError(
            path, f"{name} {ids[row]} has no row in {other_file}; expected a known {name}", row + 1
        )
    return rows.astype(np.int64)
