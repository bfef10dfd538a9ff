"""Tests for ctm_core.data: loading the user's files, holdout splits, statistics."""

import numpy as np
import pytest

from ctm_core.data import DataFileError, data_statistics, load_data_file, split_holdout

VALUES = np.array([1.5, -0.25, 3.0, 2.0, 1e-3])


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_good_files_load_to_the_same_values(tmp_path):
    npy = tmp_path / "data.npy"
    np.save(npy, VALUES)
    column = tmp_path / "column.npy"
    np.save(column, VALUES.astype(np.float32).reshape(-1, 1))
    csv = _write(tmp_path / "data.csv", "value\n" + "\n".join(repr(float(v)) for v in VALUES) + "\n")
    bare_csv = _write(tmp_path / "bare.csv", "\n".join(repr(float(v)) for v in VALUES))
    txt = _write(tmp_path / "data.TXT", "# values\n1.5\n\n-0.25\n 3.0 \n2\n1e-3\n\n")
    for path in (npy, csv, bare_csv, txt):
        loaded = load_data_file(path)
        assert loaded.dtype == np.float64 and loaded.shape == (5,)
        np.testing.assert_array_equal(loaded, VALUES)
    np.testing.assert_allclose(load_data_file(str(column)), VALUES, rtol=1e-7)
    integers = tmp_path / "ints.npy"
    np.save(integers, np.arange(4))
    np.testing.assert_array_equal(load_data_file(integers), [0.0, 1.0, 2.0, 3.0])


def _object_npy(path):
    """An .npy whose header declares Python objects, written without pickling anything."""
    with path.open("wb") as f:
        header = {"descr": "|O", "fortran_order": False, "shape": (2,)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\x80\x04junk")
    return path


def _bad_files(tmp_path):
    """(path, expected message fragment) for each kind of bad file."""
    (tmp_path / "folder.csv").mkdir()
    _write(tmp_path / "data.json", "[1, 2]")
    _write(tmp_path / "empty.txt", "")
    _write(tmp_path / "blank.txt", "\n\n  \n")
    _write(tmp_path / "word.txt", "1.0\n2.0\nabc\n")
    _write(tmp_path / "two_per_line.txt", "1.0 2.0\n")
    _write(tmp_path / "nan.txt", "1.0\nnan\n2.0\ninf\n")
    _write(tmp_path / "one.txt", "1.0\n")
    _write(tmp_path / "header_only.csv", "value\n")
    _write(tmp_path / "two_columns.csv", "x,y\n1,2\n3,4\n")
    _write(tmp_path / "word.csv", "value\n1.0\nfoo\n")
    (tmp_path / "latin1.txt").write_bytes(b"1.0\n\xe9\n")
    np.save(tmp_path / "matrix.npy", np.ones((4, 2)))
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2)))
    np.save(tmp_path / "scalar.npy", np.float64(3.0))
    np.save(tmp_path / "strings.npy", np.array(["a", "b"]))
    np.save(tmp_path / "complex.npy", np.array([1 + 2j, 3j]))
    np.save(tmp_path / "nan.npy", np.array([1.0, 2.0, np.nan, np.inf, np.nan]))
    np.save(tmp_path / "one.npy", np.array([1.0]))
    _object_npy(tmp_path / "objects.npy")
    (tmp_path / "garbage.npy").write_bytes(b"this is not numpy at all")
    np.save(tmp_path / "truncated.npy", np.arange(100.0))
    truncated = (tmp_path / "truncated.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(truncated[:200])
    np.savez(tmp_path / "archive.npz", a=np.arange(3.0))
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    return [
        ("missing.npy", "file not found"),
        ("folder.csv", "is a directory"),
        ("data.json", "unsupported extension '.json'"),
        ("empty.txt", "file is empty"),
        ("blank.txt", "at least 2 values, found 0"),
        ("word.txt", "line 3: 'abc' is not a number"),
        ("two_per_line.txt", "line 1 has 2 values"),
        ("nan.txt", "2 NaN or infinite values; the first at index 1"),
        ("one.txt", "at least 2 values, found 1"),
        ("header_only.csv", "at least 2 values, found 0"),
        ("two_columns.csv", "line 1 has 2 columns"),
        ("word.csv", "line 3: 'foo' is not a number"),
        ("latin1.txt", "not a UTF-8 text file"),
        ("matrix.npy", "shape (4, 2)"),
        ("cube.npy", "shape (2, 2, 2)"),
        ("scalar.npy", "shape ()"),
        ("strings.npy", "not a real numeric type"),
        ("complex.npy", "not a real numeric type"),
        ("nan.npy", "3 NaN or infinite values; the first at index 2"),
        ("one.npy", "at least 2 values, found 1"),
        ("objects.npy", "Python objects"),
        ("garbage.npy", "not a valid .npy file"),
        ("truncated.npy", "not a valid .npy file"),
        ("archive.npy", "zip archive"),
    ]


def test_each_bad_file_raises_data_file_error_naming_file_and_problem(tmp_path):
    for name, fragment in _bad_files(tmp_path):
        path = tmp_path / name
        with pytest.raises(DataFileError) as info:
            load_data_file(path)
        message = str(info.value)
        assert fragment in message, (name, message)
        assert str(path) in message
        assert "\n" not in message


def test_data_file_error_is_a_value_error():
    assert issubclass(DataFileError, ValueError)


def test_split_holdout_is_deterministic_with_right_sizes():
    values = np.arange(100.0)
    train, holdout = split_holdout(values, 0.2, seed=0)
    assert train.shape == (80,) and holdout.shape == (20,)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, holdout])), values)
    train2, holdout2 = split_holdout(values, 0.2, seed=0)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(holdout, holdout2)
    _, holdout3 = split_holdout(values, 0.2, seed=1)
    assert not np.array_equal(holdout, holdout3)


def test_split_holdout_zero_fraction_and_limits():
    values = np.array([3.0, 1.0, 2.0])
    train, holdout = split_holdout(values, 0.0, seed=0)
    np.testing.assert_array_equal(train, values)
    assert holdout.shape == (0,)
    with pytest.raises(DataFileError, match="need at least 2"):
        split_holdout(values, 0.5, seed=0)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            split_holdout(values, bad, seed=0)


def test_data_statistics():
    stats = data_statistics(np.array([1.0, 2.0, 3.0, 6.0]))
    assert stats == {"n": 4, "mean": 3.0, "std": pytest.approx(np.sqrt(3.5)), "min": 1.0, "max": 6.0}
    assert isinstance(stats["n"], int) and isinstance(stats["mean"], float)


def test_memory_mapped_npy_loads_and_reports_truncation(tmp_path, monkeypatch):
    monkeypatch.setattr("ctm_core.data._MMAP_BYTES", 0)
    path = tmp_path / "big.npy"
    np.save(path, VALUES.astype(np.float32))
    np.testing.assert_allclose(load_data_file(path), VALUES, rtol=1e-7)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataFileError, match=r"not a valid \.npy file"):
        load_data_file(path)
