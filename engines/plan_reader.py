"""Deserializing a plan file without a second copy of it in host memory.

    engine = deserialize_plan(trt, runtime, "engines/stage_c.plan")

A full Stage C engine is several GB. Reading it into one buffer and handing that to TensorRT holds the whole
plan in host memory while TensorRT builds the engine from it; a stream reader hands it over in pieces instead:

* `trt.IStreamReaderV2` (TensorRT 10.7 and newer; the only reader TensorRT 11 does not deprecate): TensorRT
  asks for byte ranges, possibly straight into device memory, and its Python binding asks `read` again until
  each range is filled, so every answer is at most `CHUNK_BYTES` from one reused buffer. It may also `seek`.
* `trt.IStreamReader` (10.x before 10.7, back to the 10.1 floor; Polygraphy's `FileReader` uses it): `read(n)`
  must answer the n bytes asked at once, so the pieces are as large as TensorRT asks for.
* Neither, or a `deserialize_cuda_engine` that takes no reader (its `TypeError`): the plan is read into one
  buffer that is dropped as soon as TensorRT returns.

The file is closed when deserialization returns or fails. `PlanFile` (the reading) is plain code with tests;
whether TensorRT accepts these readers is **unverified**: written against the TensorRT 10/11 Python bindings
(`deserialize_cuda_engine` overloads for a buffer, an `IStreamReader` and an `IStreamReaderV2`), never run.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

from cascade_trt.errors import ArtifactMismatchError

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 2**20
_WHENCE = {"SET": os.SEEK_SET, "CUR": os.SEEK_CUR, "END": os.SEEK_END}


class PlanFile:
    """An open plan file, read in pieces of at most `chunk` bytes into one reused buffer."""

    def __init__(self, path: str | Path, *, chunk: int = CHUNK_BYTES) -> None:
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self._file: io.BufferedReader | None = open(self.path, "rb")  # noqa: SIM115 (closed by `close`)
        self._buffer = memoryview(bytearray(chunk))

    def read_chunk(self, size: int) -> memoryview:
        """Up to min(size, chunk) next bytes (empty at the end), as a view of the reused buffer: valid until
        the next call, which is how TensorRT's binding uses it (it copies each answer before asking again)."""
        n = self._open().readinto(self._buffer[: max(0, min(size, len(self._buffer)))])
        return self._buffer[: n or 0]

    def read_exact(self, size: int) -> bytes:
        """The next `size` bytes (fewer only at the end of the file), in a buffer of their own."""
        return self._open().read(max(0, size))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> bool:
        """Move to `offset` from `whence` (an `os.SEEK_*`); False when outside the file."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._open().tell(), os.SEEK_END: self.size}[whence]
        if not 0 <= base + offset <= self.size:
            return False
        self._open().seek(base + offset)
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def _open(self) -> io.BufferedReader:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        return self._file


def stream_reader(trt: Any, plan: PlanFile) -> Any | None:
    """A TensorRT stream reader over `plan`: `IStreamReaderV2` where this TensorRT has it, else
    `IStreamReader`, else None."""
    if hasattr(trt, "IStreamReaderV2"):
        base = trt.IStreamReaderV2
        whence = {getattr(trt.SeekPosition, name): value for name, value in _WHENCE.items()}

        class ReaderV2(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)  # a pybind11 trampoline must be initialised explicitly

            def read(self, size: int, stream: int) -> memoryview:
                # The binding copies the answer, to the host or the device, synchronously.
                return plan.read_chunk(size)

            def seek(self, offset: int, where: Any) -> bool:
                return plan.seek(offset, whence[where])

        return ReaderV2()
    if hasattr(trt, "IStreamReader"):
        base = trt.IStreamReader

        class Reader(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)

            def read(self, size: int) -> bytes:
                return plan.read_exact(size)

        return Reader()
    return None


def deserialize_plan(
    trt: Any, runtime: Any, path: str | Path, *, rebuild: str = "cascade-trt build", chunk: int = CHUNK_BYTES
) -> Any:
    """The engine in `path`, streamed into TensorRT where it can be; ArtifactMismatchError naming the `rebuild`
    command when TensorRT cannot deserialize it (another TensorRT version, a truncated file)."""
    path = Path(path)
    plan = PlanFile(path, chunk=chunk)
    try:
        engine = None
        reader = stream_reader(trt, plan)
        if reader is not None:
            try:
                engine = runtime.deserialize_cuda_engine(reader)
            except TypeError:  # this TensorRT's binding takes no reader: a whole buffer instead
                log.debug("%s: deserialize_cuda_engine takes no stream reader here", path)
                reader = None
        if reader is None:
            plan.seek(0)
            engine = runtime.deserialize_cuda_engine(plan.read_exact(plan.size))  # dropped on return
    finally:
        plan.close()
    if engine is None:
        raise ArtifactMismatchError(
            f"TensorRT {trt.__version__} could not deserialize {path} ({plan.size} bytes; its log above says "
            f"why: another TensorRT version, or a truncated file): rebuild it: `{rebuild}`"
        )
    return engine
