"""OpenFace's two matrix serialisations: the text ``ReadMat`` and binary ``ReadMatBin``.

Both store ``rows, cols, type`` followed by the values, where ``type`` is an
OpenCV depth code. Errors name the file and the byte offset (binary) or line
(text) where the data stops making sense.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import ModelError

#: OpenCV depth code -> little-endian numpy dtype, for single-channel matrices.
CV_DTYPES = {0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
             4: np.dtype("<i4"), 5: np.dtype("<f4"), 6: np.dtype("<f8")}

#: Largest matrix side we accept; protects against reading garbage as a size.
_MAX_SIDE = 1 << 20


class BinaryReader:
    """Sequential little-endian reader over a model file's bytes.

    Parameters
    ----------
    path : Path
        Used only in error messages.
    data : bytes
        The whole file.
    """

    def __init__(self, path: str | Path, data: bytes):
        self.path = Path(path)
        self.data = data
        self.offset = 0

    def _take(self, n: int, what: str) -> int:
        start = self.offset
        if start + n > len(self.data):
            raise ModelError(f"file is truncated: {what} needs {n} bytes, "
                             f"{len(self.data) - start} left", self.path, f"byte {start}")
        self.offset += n
        return start

    def int32(self, what: str = "an int32") -> int:
        start = self._take(4, what)
        return struct.unpack_from("<i", self.data, start)[0]

    def float64(self, what: str = "a float64") -> float:
        start = self._take(8, what)
        return struct.unpack_from("<d", self.data, start)[0]

    def expect_marker(self, expected: int, what: str) -> None:
        """Read an int32 type marker and check it (OpenFace's sanity checks)."""
        start = self.offset
        got = self.int32(what)
        if got != expected:
            raise ModelError(f"wrong type marker for {what}: expected {expected}, found {got}",
                             self.path, f"byte {start}")

    def mat(self, what: str = "a matrix") -> np.ndarray:
        """Read one ``ReadMatBin`` matrix: int32 rows, cols, type, then raw values.

        Returns
        -------
        numpy.ndarray
            ``(rows, cols)`` in the stored dtype (row-major, as OpenCV stores it).
        """
        start = self.offset
        rows, cols, cv_type = (self.int32(what) for _ in range(3))
        dtype = CV_DTYPES.get(cv_type)
        if dtype is None or not (0 <= rows <= _MAX_SIDE and 0 <= cols <= _MAX_SIDE):
            raise ModelError(f"malformed matrix header for {what}: rows={rows} cols={cols} "
                             f"type={cv_type}", self.path, f"byte {start}")
        n = rows * cols
        at = self._take(n * dtype.itemsize, what)
        return np.frombuffer(self.data, dtype, n, at).reshape(rows, cols).copy()

    def at_end(self) -> bool:
        return self.offset == len(self.data)


def read_bytes(path: str | Path) -> bytes:
    """Whole file contents, or a :class:`ModelError` naming the file."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ModelError("model file is missing", p) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file ({exc.strerror})", p) from None


class TextReader:
    """Token reader for OpenFace text model files (``#`` comment lines skipped)."""

    def __init__(self, path: str | Path, text: str):
        self.path = Path(path)
        self.tokens: list[tuple[str, int]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            self.tokens.extend((tok, lineno) for tok in line.split())
        self.pos = 0

    def _next(self, what: str) -> tuple[str, int]:
        if self.pos >= len(self.tokens):
            raise ModelError(f"file ends early while reading {what}", self.path, "end of file")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def int(self, what: str) -> int:
        tok, line = self._next(what)
        try:
            return int(tok)
        except ValueError:
            raise ModelError(f"expected an integer for {what}, found {tok!r}",
                             self.path, f"line {line}") from None

    def mat(self, what: str) -> np.ndarray:
        """Read one ``ReadMat`` text matrix: rows, cols, type, then values row by row."""
        rows, cols, cv_type = self.int(what), self.int(what), self.int(what)
        dtype = CV_DTYPES.get(cv_type)
        if dtype is None or rows < 0 or cols < 0:
            raise ModelError(f"malformed matrix header for {what}: rows={rows} cols={cols} "
                             f"type={cv_type}", self.path, f"token {self.pos}")
        n = rows * cols
        if self.pos + n > len(self.tokens):
            raise ModelError(f"file ends early: {what} needs {n} values, "
                             f"{len(self.tokens) - self.pos} left", self.path, "end of file")
        chunk = self.tokens[self.pos:self.pos + n]
        try:
            values = np.array([float(t) for t, _ in chunk], dtype=np.float64)
        except ValueError:
            bad = next((t, ln) for t, ln in chunk if not _is_number(t))
            raise ModelError(f"expected a number in {what}, found {bad[0]!r}",
                             self.path, f"line {bad[1]}") from None
        self.pos += n
        return values.astype(dtype).reshape(rows, cols)


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def read_text(path: str | Path) -> str:
    """A text model file's contents, or a :class:`ModelError` naming the file."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError("not a text file", path, f"byte {exc.start}") from None
