"""Loading, validating and splitting the user's own 1D data (.npy, .csv, .txt)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

SUPPORTED_EXTENSIONS = (".npy", ".csv", ".txt")
# .npy files above this size are memory-mapped rather than read whole before conversion.
_MMAP_BYTES = 64 * 2**20
# Checks and statistics walk large arrays in chunks of this many values (bounded memory).
CHUNK_VALUES = 2**20
_NPY_MAGIC = b"\x93NUMPY"


class DataFileError(ValueError):
    """A data file that cannot be used, with a one-line message naming the file and the problem."""


def _parse_number(text: str, path: Path, line_no: int) -> float:
    """float(text), or DataFileError naming the file and the 1-based line."""
    try:
        return float(text)
    except ValueError:
        raise DataFileError(f"{path}: line {line_no}: {text.strip()!r} is not a number") from None


def _read_lines(path: Path) -> list[str]:
    """The file's lines as UTF-8 text (a BOM is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataFileError(f"{path}: not a UTF-8 text file") from None


def _load_csv(path: Path) -> np.ndarray:
    """One numeric column; an optional single non-numeric header line; blank lines ignored."""
    values: list[float] = []
    seen_first = False
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) > 1:
            raise DataFileError(
                f"{path}: line {line_no} has {len(fields)} columns; expected one numeric column"
            )
        if not seen_first:
            seen_first = True
            try:
                values.append(float(fields[0]))
            except ValueError:
                continue  # the header
        else:
            values.append(_parse_number(fields[0], path, line_no))
    return np.asarray(values, dtype=np.float64)


def _load_txt(path: Path) -> np.ndarray:
    """One value per line; blank lines and lines starting with '#' are ignored."""
    values: list[float] = []
    for line_no, line in enumerate(_read_lines(path), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if len(text.split()) > 1:
            raise DataFileError(
                f"{path}: line {line_no} has {len(text.split())} values; expected one per line"
            )
        values.append(_parse_number(text, path, line_no))
    return np.asarray(values, dtype=np.float64)


def _load_npy(path: Path) -> np.ndarray:
    """A numeric .npy array of shape (n,) or (n, 1) as float64 (n,); never unpickles."""
    return np.array(_open_npy(path, mmap=path.stat().st_size > _MMAP_BYTES), dtype=np.float64)


def _open_npy(path: Path, mmap: bool) -> np.ndarray:
    """A numeric .npy array of shape (n,) or (n, 1) as a view of shape (n,) in the file's own
    dtype: memory-mapped read-only with `mmap`, else read whole; never unpickles."""
    with path.open("rb") as f:
        magic = f.read(len(_NPY_MAGIC))
    # Checked first: np.load treats any unrecognised file as a pickle.
    if magic != _NPY_MAGIC:
        if magic.startswith(b"PK"):
            raise DataFileError(f"{path}: a zip archive (.npz?), not a single .npy array")
        raise DataFileError(f"{path}: not a valid .npy file (no NumPy header)")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except ValueError as err:
        if "pickle" in str(err) or "Python objects" in str(err):
            raise DataFileError(
                f"{path}: holds Python objects (pickled data), which are not loaded; "
                "save a plain numeric array"
            ) from None
        raise DataFileError(f"{path}: not a valid .npy file ({err})") from None
    except (OSError, EOFError, SyntaxError) as err:
        raise DataFileError(f"{path}: not a valid .npy file ({err})") from None
    if array.dtype.kind not in "iuf":
        raise DataFileError(f"{path}: dtype {array.dtype} is not a real numeric type")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataFileError(f"{path}: array of shape {array.shape}; expected shape (n,) or (n, 1)")
    return array


_LOADERS = {".npy": _load_npy, ".csv": _load_csv, ".txt": _load_txt}


def load_data_file(path: str | Path, mmap_min_values: int | None = None) -> np.ndarray:
    """Validated 1D data from .npy, .csv or .txt as float64 (n,), n ≥ 2, all finite.

    With `mmap_min_values`, a .npy file of at least that many values comes back as a read-only
    `np.memmap` of shape (n,) in the file's own dtype instead: nothing is copied into memory (the
    checks walk it in chunks), so several processes can sample one file through the page cache.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found")
    if path.is_dir():
        raise DataFileError(f"{path}: is a directory, not a data file")
    ext = path.suffix.lower()
    if ext not in _LOADERS:
        expected = ", ".join(SUPPORTED_EXTENSIONS)
        raise DataFileError(f"{path}: unsupported extension {ext!r}; expected one of {expected}")
    if path.stat().st_size == 0:
        raise DataFileError(f"{path}: file is empty")
    values: np.ndarray | None = None
    if ext == ".npy" and mmap_min_values is not None:
        mapped = _open_npy(path, mmap=True)
        if mapped.size >= mmap_min_values:
            values = mapped
    if values is None:
        values = _LOADERS[ext](path)
    _check_finite(path, values)
    if values.size < 2:
        raise DataFileError(f"{path}: needs at least 2 values, found {values.size}")
    return values


def _chunks(values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, values[offset:offset + CHUNK_VALUES] as float64), over the whole array."""
    for start in range(0, values.size, CHUNK_VALUES):
        yield start, np.asarray(values[start : start + CHUNK_VALUES], dtype=np.float64)


def _check_finite(path: Path, values: np.ndarray) -> None:
    """DataFileError counting the NaN or infinite values and naming the first one's index."""
    if values.dtype.kind != "f":
        return
    count, first = 0, -1
    for start, chunk in _chunks(values):
        bad = ~np.isfinite(chunk)
        if bad.any():
            first = start + int(np.argmax(bad)) if first < 0 else first
            count += int(bad.sum())
    if count:
        raise DataFileError(f"{path}: {count} NaN or infinite values; the first at index {first}")


def split_holdout(values: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout): a seeded shuffle with round(fraction·n) values held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n_holdout = round(fraction * values.size)
    if values.size - n_holdout < 2:
        raise DataFileError(
            f"holdout fraction {fraction} of {values.size} values leaves "
            f"{values.size - n_holdout} for training; need at least 2"
        )
    if n_holdout == 0:
        return values.copy(), values[:0].copy()
    order = np.random.default_rng(seed).permutation(values.size)
    return values[order[n_holdout:]], values[order[:n_holdout]]


def data_statistics(values: np.ndarray) -> dict[str, float | int]:
    """{"n", "mean", "std" (population), "min", "max"} as plain Python numbers.

    An array larger than one chunk (a memory-mapped file) is read in chunks, twice (mean, then
    the spread about it), never copied whole.
    """
    if values.size > CHUNK_VALUES:
        total, low, high = 0.0, np.inf, -np.inf
        for _, chunk in _chunks(values):
            total += float(chunk.sum())
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        mean = total / values.size
        spread = sum(float(((chunk - mean) ** 2).sum()) for _, chunk in _chunks(values))
        std = (spread / values.size) ** 0.5
        return {"n": int(values.size), "mean": mean, "std": std, "min": low, "max": high}
    values = np.asarray(values, dtype=np.float64)
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }
