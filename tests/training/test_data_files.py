"""Data files are checked by `dslc check` when they exist: an unknown CSV column, a file without a header, bad bytes
or values, a truncated or pickled array are errors at the spec's `data = ...` line, and `dslc train` refuses them
before it writes the run folder. Every file is hostile: only its start is read (or an array's header)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dslc.cli import main
from dslc.data.registry import CHECK_BYTES

MODEL = "model m {\n    input features: float32[batch, 2]\n    output y = features -> Linear(1)\n}\n"
CSV = 'csv("d.csv", features=["a", "b"], target="t")'
DATA_LINE = "6:12"  # `    data = ` then the call


def dslc(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def write_spec(folder: Path, data: str, loss: str = "mse(y, target)") -> Path:
    spec = folder / "s.model"
    spec.write_text(MODEL + f"train {{\n    data = {data}\n    loss = {loss}\n}}\n")
    return spec


def check(folder: Path, data: bytes, *args: str, call: str = CSV) -> tuple[list[str], int]:
    """`dslc check` of a spec reading `d.csv` (holding `data`): the output's lines and the exit code."""
    (folder / "d.csv").write_bytes(data)
    code, output = dslc("check", str(write_spec(folder, call)), *args)
    return output.splitlines(), code


def located(folder: Path, message: str) -> str:
    return f"{folder / 's.model'}:{DATA_LINE}: error: {message}"


@pytest.mark.parametrize(
    ("data", "message", "hint"),
    [
        (b"a,bb,t\n1,2,3\n", "no column 'b'", "did you mean 'bb'?"),
        (b"x,y,z\n1,2,3\n", "no column 'a'", "columns: x, y, z"),
        (
            b"1,2,3\n4,5,6\n",
            "no column 'a'",
            "its first row holds numbers: the file needs a header row naming the columns",
        ),
        (b"a,\x1b[2Jb\x00,t\n1,2,3\n", "no column 'b'", "columns: a, \\x1b[2Jb\\x00, t"),  # shown escaped
        (b"", "empty file, expected a header row naming the columns", None),
        (b"\n\n", "empty file, expected a header row naming the columns", None),
        (b"a,b,t\n", "no data rows", None),
        (b"a,b,t\n1,2,3\n1,abc,3\n", ":3: column 'b' holds 'abc', expected a number", None),
        (b"a,b,t\n1,2,\n", ":2: column 't' is empty, expected a number", None),
        (b"a,b,t\n1,inf,3\n", ":2: column 'b' holds 'inf', expected a finite number", None),
        (b"a,b,t\n1,2\x003,4\n", ":2: column 'b' holds '2\\x003', expected a number", None),
        (b"a,b,t\n1,2,3\n4,5\n", ":3: 2 fields, expected 3 as in the header (a, b, t)", "every row needs one value"),
        (b"a,b,t\n1,caf\xe9,3\n", ":2: not UTF-8 text (byte 0xe9 at column 6)", "save the file as UTF-8"),
        (b"a,b,a,t\n1,2,3,4\n", ":1: the header names column 'a' twice", "give every column its own name"),
    ],
)
def test_a_bad_csv_file_is_an_error_at_the_data_line(tmp_path, data, message, hint):
    lines, code = check(tmp_path, data)
    assert code == 1 and lines[-1] == "1 error"
    path = tmp_path / "d.csv"
    assert lines[0] == located(tmp_path, f"{path}{message}" if message.startswith(":") else f"{path}: {message}")
    assert lines[1].startswith("    6 |     data = csv(")  # the caret block under the spec's data line
    hints = [line for line in lines if line.startswith("  hint: ")]
    assert hints[0].startswith(f"  hint: {hint}") if hint else not hints, lines


def test_a_good_csv_file_checks(tmp_path):
    lines, code = check(tmp_path, b"\xef\xbb\xbfa,b,t\r\n1,2,3\r\n\r\n4,5,6\r\n7,8,9\r\n")
    assert (code, lines) == (0, [f"{tmp_path / 's.model'}: ok (m; 3 parameters)"])


def test_a_huge_csv_file_is_checked_from_its_start(tmp_path):
    """Only the first CHECK_BYTES are read: the header and the rows there (a character or a row cut at the limit
    is no error); a bad value further on is left to `dslc train`, which reads the whole file."""
    head, rows = b"a,b,t\n", b"1,2,3\n" * (CHECK_BYTES // 6 - 2)
    cut = b"1" * (CHECK_BYTES - len(head + rows) - 4) + b",2,\xc3\xa9\n"  # the limit splits the 'é'
    assert len(head + rows + cut) == CHECK_BYTES + 2
    lines, code = check(tmp_path, head + rows + cut + b"1,x,3\n" * 1000)
    assert code == 0, lines
    lines, code = check(tmp_path, b"a,bb,t\n" + rows * 2)
    assert code == 1 and lines[0] == located(tmp_path, f"{tmp_path / 'd.csv'}: no column 'b'")
    lines, code = check(tmp_path, b"a," * CHECK_BYTES + b"t\n1,2\n")
    assert code == 1 and lines[0] == located(
        tmp_path, f"{tmp_path / 'd.csv'}: no header row in the first 1,048,576 bytes"
    )


def test_dslc_train_refuses_an_unknown_column_before_writing_the_run_folder(tmp_path):
    (tmp_path / "d.csv").write_text("a,bb,t\n1,2,3\n")
    out = tmp_path / "run"
    code, output = dslc("train", str(write_spec(tmp_path, CSV)), "--out", str(out))
    assert code == 1 and output.startswith(located(tmp_path, f"{tmp_path / 'd.csv'}: no column 'b'"))
    assert "hint: did you mean 'bb'?" in output and not out.exists()


def test_set_data_path_replaces_the_positional_path(tmp_path):
    (tmp_path / "other.csv").write_text("a,b,tt\n1,2,3\n")
    lines, code = check(tmp_path, b"a,b,t\n1,2,3\n", "--set", "data.path=other.csv")
    assert code == 1 and lines[0] == located(tmp_path, f"{tmp_path / 'other.csv'}: no column 't'")
    assert "  hint: did you mean 'tt'?" in lines


def test_a_text_file_line_without_a_tab_is_an_error_at_the_data_line(tmp_path):
    (tmp_path / "d.txt").write_bytes(b"pos\tgood film\nneg bad film\n")
    spec = write_spec(tmp_path, 'text("d.txt")', loss="cross_entropy(y, label)")
    code, output = dslc("check", str(spec))
    assert code == 1
    assert output.startswith(located(tmp_path, f"{tmp_path / 'd.txt'}:2: expected LABEL<TAB>TEXT"))


def npz_spec(folder: Path, arrays: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(folder / "d.npz", "w") as archive:
        for name, data in arrays.items():
            archive.writestr(name, data)
    return write_spec(folder, 'npz("d.npz")')


def npy_bytes(array: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_npz_fields_come_from_the_array_headers(tmp_path):
    spec = npz_spec(
        tmp_path,
        {"features.npy": npy_bytes(np.zeros((4, 2), np.float32)), "target.npy": npy_bytes(np.zeros((4, 1)))},
    )
    assert dslc("check", str(spec)) == (0, f"{spec}: ok (m; 3 parameters)\n")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"features.npy": npy_bytes(np.zeros((4, 2), np.float32))[:-8]},
            "{npz}: array 'features': truncated, the header promises 160 bytes and the file holds 152",
        ),
        (
            {"features.npy": npy_bytes(np.array([[{}]] * 4, dtype=object))},
            "{npz}: array 'features': holds Python objects (pickled); only numeric arrays are read",
        ),
        (
            {"features.npy": npy_bytes(np.float32(1.0))},
            "{npz}: array 'features': unsupported dtype float32 or no batch dimension (one array row per example)",
        ),
        ({"notes.txt": b"hello"}, "{npz}: member 'notes.txt' is not a .npy array"),
        ({"features.npy": b"PK\x03\x04 not an array"}, "cannot read {npz}: the magic string is not correct"),
    ],
)
def test_a_bad_npz_member_is_an_error_at_the_data_line(tmp_path, arrays, message):
    code, output = dslc("check", str(npz_spec(tmp_path, arrays)))
    assert code == 1
    assert output.startswith(located(tmp_path, message.format(npz=tmp_path / "d.npz"))), output


def test_an_npz_that_is_no_zip_and_a_truncated_npy(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"\x00" * 100)
    code, output = dslc("check", str(write_spec(tmp_path, 'npz("d.npz")')))
    assert code == 1 and output.startswith(
        located(tmp_path, f"cannot read {tmp_path / 'd.npz'}: File is not a zip file")
    )
    (tmp_path / "x.npy").write_bytes(npy_bytes(np.zeros((4, 2), np.float32))[:-1])
    (tmp_path / "y.npy").write_bytes(npy_bytes(np.zeros((4, 1), np.float32)))
    spec = write_spec(tmp_path, 'npy(files=[("features", "x.npy"), ("target", "y.npy")])')
    code, output = dslc("check", str(spec))
    assert code == 1
    assert output.startswith(
        located(tmp_path, f"{tmp_path / 'x.npy'}: truncated, the header promises 160 bytes and the file holds 159")
    )


def test_arrays_with_different_numbers_of_rows_are_refused_at_check(tmp_path):
    (tmp_path / "x.npy").write_bytes(npy_bytes(np.zeros((4, 2), np.float32)))
    (tmp_path / "y.npy").write_bytes(npy_bytes(np.zeros((3, 1), np.float32)))
    code, output = dslc("check", str(write_spec(tmp_path, 'npy(files=[("features", "x.npy"), ("target", "y.npy")])')))
    assert code == 1
    assert output.startswith(
        located(tmp_path, "npy: the arrays hold different numbers of examples ('features' 4, 'target' 3)")
    ), output


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("npz", "npz: validation=0.2 of its 2 examples leaves the validation split empty"),
        ("csv", "csv: validation=0.2 of its 2 examples leaves the validation split empty"),
        ("text_lm", "text_lm: validation=0.2 of its 2 examples leaves the validation split empty"),
    ],
)
def test_data_files_too_small_to_split_are_refused_at_check(tmp_path, source, message):
    """`dslc train` would find an empty split: check counts the examples of a file (an array's header, all of a small
    CSV file, a text's windows) as the loader splits them."""
    (tmp_path / "d.csv").write_text("a,b,t\n1,2,3\n4,5,6\n")
    (tmp_path / "d.txt").write_text("0123456789")
    arrays = {"features.npy": npy_bytes(np.zeros((2, 2), np.float32)), "target.npy": npy_bytes(np.zeros((2, 1)))}
    calls = {"npz": 'npz("d.npz")', "csv": CSV, "text_lm": 'text_lm("d.txt", length=4)'}
    spec = npz_spec(tmp_path, arrays) if source == "npz" else write_spec(tmp_path, calls[source])
    code, output = dslc("check", str(spec))
    assert code == 1 and output.startswith(located(tmp_path, message)), output
    assert "hint: hold out at least one example and keep one: validation between 0.5 and 0.5" in output


def labelled_npy_spec(folder: Path, labels: np.ndarray, loss: str = "cross_entropy(y, label)") -> Path:
    np.save(folder / "x.npy", np.zeros((len(labels), 2), np.float32))
    np.save(folder / "y.npy", labels)
    return write_spec(folder, 'npy(files=[("features", "x.npy"), ("label", "y.npy")])', loss)


@pytest.mark.parametrize(
    ("labels", "loss", "bad"),
    [
        (np.arange(12) % 3, "cross_entropy(y, label)", 2),  # the model has 1 output
        (np.array([0, -1, 0, 0, 0]), "cross_entropy(y, label)", -1),
        (np.array([0, -100, 0, 7, 0], np.int32), "cross_entropy(y, label, ignore_index=-100)", 7),
    ],
)
def test_class_ids_a_model_cannot_score_are_refused_at_check(tmp_path, labels, loss, bad):
    """`dslc train` found these before its first step; check reads small integer arrays to find them first."""
    code, output = dslc("check", str(labelled_npy_spec(tmp_path, labels, loss)))
    assert code == 1, output
    assert output.startswith(
        located(tmp_path, f"npy: field 'label' holds class id {bad}, outside [0, 1) for a model with 1 outputs")
    ), output


def test_class_ids_within_the_classes_or_ignored_check(tmp_path):
    assert dslc("check", str(labelled_npy_spec(tmp_path, np.zeros(5, np.int64))))[0] == 0
    spec = labelled_npy_spec(tmp_path, np.array([0, -100, 0, 0, 0]), "cross_entropy(y, label, ignore_index=-100)")
    assert dslc("check", str(spec))[0] == 0


def test_the_classes_of_a_csv_label_column_are_counted_at_check(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,kind\n" + "".join(f"1,2,{kind}\n" for kind in "xyzxyz"))
    code, output = dslc(
        "check", str(write_spec(tmp_path, 'csv("d.csv", features=["a", "b"], label="kind")', "cross_entropy(y, label)"))
    )
    assert code == 1 and output.startswith(located(tmp_path, "csv: field 'label' holds class id 2, outside [0, 1)"))
