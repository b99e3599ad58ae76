"""
What every harness shares: instrumentation, seeding and the libFuzzer entry point.

A harness module defines ``test_one_input(data)``, which decodes ``data``
and lets only the codec's own error escape (any other exception is a crash
that atheris reports), and ``seeds()``, the inputs its corpus starts from.
It ends with ``main(test_one_input, seeds)``, so that::

    python -m fuzz.sip CORPUS_DIR -runs=1000000

writes the seeds into ``CORPUS_DIR`` and fuzzes; every libFuzzer flag
works, and a file instead of a folder replays one input.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

try:
    import atheris
except ImportError:  # the harnesses still import (and tests can call them) without it
    atheris = None


class HarnessFailure(AssertionError):
    """A property the codec promises (a round trip, chunking) does not hold."""


def instrumented() -> Any:
    """Instrument the p2psip modules imported inside the block, for coverage feedback."""
    if atheris is None:
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=["p2psip"])


def mode(data: bytes, count: int) -> tuple[int, bytes]:
    """Split off the first byte as a mode selector in ``range(count)``; the rest is the input."""
    if not data:
        return 0, b""
    return data[0] % count, data[1:]


def chunks(data: bytes) -> tuple[list[bytes], bytes]:
    """
    Split a stream input into chunk sizes and payload: the first byte is the
    chunk size (0 means "all at once"), so one input tries one chunking.
    """
    if not data:
        return [], b""
    size, payload = data[0], data[1:]
    if size == 0:
        return [payload], payload
    return [payload[i : i + size] for i in range(0, len(payload), size)], payload


def same_when_chunked(
    feed: Callable[[list[bytes]], Any], data: bytes, error: type[Exception]
) -> Any:
    """
    Feed a stream decoder ``data`` whole and in the chunks its first byte
    asks for (see :func:`chunks`); ``feed`` returns what it decoded, or the
    ``error`` it caught.  The two outcomes must agree: a decoder may not
    depend on how the bytes were split.  Returns the whole-stream outcome,
    or None when that was an error.
    """
    pieces, payload = chunks(data)
    chunked, whole = feed(pieces), feed([payload])
    if isinstance(chunked, error) != isinstance(whole, error):
        raise HarnessFailure(f"chunking changed the outcome: {chunked!r} vs {whole!r}")
    if isinstance(whole, error):
        return None
    if chunked != whole:
        raise HarnessFailure(f"chunking changed what was decoded: {chunked!r} vs {whole!r}")
    return whole


def shared_testdata(*parts: str) -> Path | None:
    """A folder of the shared test data beside the checkout, or None when it is absent."""
    from p2psip.testing import shared_dir

    path = shared_dir().joinpath("testdata", *parts)
    return path if path.exists() else None


def shared_files(folder: str, pattern: str) -> Iterator[bytes]:
    """The contents of shared test files, or nothing when the shared folder is missing."""
    path = shared_testdata(folder)
    if path is None:
        print(f"note: shared testdata/{folder} not found; seeding without it", file=sys.stderr)
        return
    for file in sorted(path.glob(pattern)):
        yield file.read_bytes()


def write_seeds(folder: Path, seeds: Iterable[bytes]) -> int:
    """Add each seed to the corpus folder, named by its hash; how many there are."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in seeds:
        (folder / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)
        count += 1
    return count


def main(test_one_input: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    """Seed the corpus folder named on the command line (if any), then fuzz."""
    if atheris is None:
        raise SystemExit("atheris is not installed: pip install -e '.[fuzz]' (or make fuzz)")
    folders = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if folders and not folders[0].is_file():
        write_seeds(folders[0], seeds())
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
