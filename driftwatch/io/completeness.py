"""Is a FITS file completely written? Walk its HDUs by the FITS size rule and compare with its size.

A file being transferred is either shorter than its structure says (still being written, or cut
short), or complete. Reading it with astropy is no test: astropy opens a truncated file with only
a warning. Instead we read the headers only (a few kB per HDU) and add up the sizes the standard
gives (FITS 4.0, section 7):

    data bytes = |BITPIX| / 8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)

rounded up to whole 2880-byte blocks. For a RICE-compressed ``.fits.fz`` CCD (a BINTABLE with
ZIMAGE = T), PCOUNT is the size of the heap that holds the compressed pixels, so the same rule
holds. The file is complete when the end of the last HDU is the end of the file.

A file cut exactly at an HDU boundary passes that test, so the number of extensions is checked
against NEXTEND (or, where there is no NEXTEND, the expected CCD names). Where an HDU carries
CHECKSUM / DATASUM they are verified with the 32-bit ones'-complement sum of the standard's
Appendix J (numpy, one pass over the file).

:func:`check_fits` never raises for bad data; it returns a :class:`Completeness` verdict:
``complete``, ``incomplete`` (wait: it may still grow) or ``corrupt`` (with the reason).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

BLOCK = 2880
CARD = 80
#: Header blocks we are willing to read for one HDU before calling the file corrupt (~29 MB).
MAX_HEADER_BLOCKS = 10_000

Status = Literal["complete", "incomplete", "corrupt"]


@dataclass(frozen=True)
class HduInfo:
    """Where one HDU lies in the file and what it claims to be."""

    index: int
    header_start: int     # byte offset of the first header block
    data_start: int       # byte offset of the first data block
    data_bytes: int       # unpadded size of the data (including the heap)
    extname: str | None
    checksum: str | None
    datasum: str | None

    @property
    def end(self) -> int:
        """Byte offset just after the padded data."""
        return self.data_start + _padded(self.data_bytes)


@dataclass(frozen=True)
class Completeness:
    """The verdict on one file."""

    status: Status
    reason: str = ""
    size: int = 0                          # bytes on disk when checked
    hdus: tuple[HduInfo, ...] = ()
    checksums_verified: int = 0            # HDUs whose CHECKSUM/DATASUM were checked and good

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def extnames(self) -> tuple[str, ...]:
        return tuple(h.extname for h in self.hdus if h.extname)


class _Incomplete(Exception):
    pass


class _Corrupt(Exception):
    pass


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _parse_value(raw: str) -> str | int | float | bool | None:
    """Parse the value field of a card (columns 11-80), ignoring the comment."""
    raw = raw.strip()
    if raw.startswith("'"):
        # A quote inside a string is written twice; the string ends at a lone quote.
        out, i = [], 1
        while i < len(raw):
            ch = raw[i]
            if ch == "'":
                if raw[i + 1:i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                break
            out.append(ch)
            i += 1
        return "".join(out).rstrip()
    token = raw.split("/", 1)[0].strip()
    if token in ("T", "F"):
        return token == "T"
    if not token:
        return None
    try:
        return int(token)
    except ValueError:
        try:
            return float(token.replace("D", "E"))
        except ValueError:
            return token


def _read_header(fh: BinaryIO, start: int, size: int, first: bool) -> tuple[dict, int]:
    """Read the header that starts at ``start``; return its keywords and the data offset."""
    cards: dict[str, object] = {}
    offset = start
    for nblock in range(MAX_HEADER_BLOCKS):
        if offset + BLOCK > size:
            raise _Incomplete(f"header of HDU at byte {start} is cut at byte {size}")
        fh.seek(offset)
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            raise _Incomplete(f"header of HDU at byte {start} is cut at byte {offset + len(block)}")
        offset += BLOCK
        if nblock == 0:
            head = block[:9]
            if first and head != b"SIMPLE  =":
                raise _Corrupt("not a FITS file (does not start with SIMPLE)")
            if not first and head != b"XTENSION=":
                if not block.strip(b"\0"):
                    raise _Incomplete(f"zero-filled bytes after the HDU ending at byte {start}")
                raise _Corrupt(f"unexpected bytes after the HDU ending at byte {start}")
        try:
            text = block.decode("ascii")
        except UnicodeDecodeError:
            raise _Corrupt(f"non-ASCII bytes in the header at byte {offset - BLOCK}") from None
        for i in range(0, BLOCK, CARD):
            card = text[i:i + CARD]
            key = card[:8].rstrip()
            if key == "END":
                return cards, offset
            if card[8:10] == "= " and key not in cards:
                cards[key] = _parse_value(card[10:])
    raise _Corrupt(f"no END card within {MAX_HEADER_BLOCKS} header blocks at byte {start}")


def _data_bytes(cards: dict, where: str) -> int:
    def integer(key: str, default: int | None = None) -> int:
        value = cards.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Corrupt(f"{where}: {key} is missing or not an integer ({value!r})")
        return value

    bitpix = integer("BITPIX")
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise _Corrupt(f"{where}: invalid BITPIX {bitpix}")
    naxis = integer("NAXIS")
    if not 0 <= naxis <= 999:
        raise _Corrupt(f"{where}: invalid NAXIS {naxis}")
    if naxis == 0:
        return 0
    axes = [integer(f"NAXIS{k}") for k in range(1, naxis + 1)]
    if any(a < 0 for a in axes):
        raise _Corrupt(f"{where}: negative axis length")
    pcount = integer("PCOUNT", 0)
    gcount = integer("GCOUNT", 1)
    if pcount < 0 or gcount < 0:
        raise _Corrupt(f"{where}: negative PCOUNT or GCOUNT")
    if axes[0] == 0 and cards.get("GROUPS") is True:  # random groups: NAXIS1 = 0 is a flag
        axes = axes[1:]
    return abs(bitpix) // 8 * gcount * (pcount + int(np.prod(axes, dtype=np.int64)))


def ones_complement_sum(data: bytes | np.ndarray, start: int = 0) -> int:
    """Return the 32-bit ones'-complement sum of big-endian words (FITS Appendix J).

    ``data`` must be a whole number of 4-byte words (every FITS block is); ``start`` is a
    running sum to continue from.
    """
    words = np.frombuffer(data, dtype=">u4") if not isinstance(data, np.ndarray) else data
    total = int(start)
    # Sum in uint64 pieces small enough that no piece can overflow (2**32 words of < 2**32).
    step = 1 << 24
    for i in range(0, words.size, step):
        total += int(words[i:i + step].sum(dtype=np.uint64))
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def _verify_checksums(path: Path, hdus: Sequence[HduInfo]) -> int:
    """Check every HDU's DATASUM and CHECKSUM; return how many HDUs carried one."""
    verified = 0
    mm = np.memmap(path, dtype=">u4", mode="r")
    try:
        for h in hdus:
            if h.checksum is None and h.datasum is None:
                continue
            data = ones_complement_sum(mm[h.data_start // 4:h.end // 4])
            if h.datasum is not None and h.datasum.strip():
                try:
                    expected = int(h.datasum.strip())
                except ValueError:
                    raise _Corrupt(f"HDU {h.index}: DATASUM is not a number ({h.datasum!r})")
                if expected != data:
                    raise _Corrupt(f"HDU {h.index}: DATASUM {expected} does not match the data "
                                   f"({data})")
            if h.checksum is not None and h.checksum.strip():
                total = ones_complement_sum(mm[h.header_start // 4:h.data_start // 4], data)
                # A good CHECKSUM makes the sum of the whole HDU negative zero (all ones).
                if total != 0xFFFFFFFF:
                    raise _Corrupt(f"HDU {h.index}: CHECKSUM does not match the header and data")
            verified += 1
    finally:
        del mm
    return verified


def check_fits(path: str | os.PathLike[str], expected_extnames: Sequence[str] | None = None,
               verify_checksum: bool = True) -> Completeness:
    """Judge whether the FITS file at ``path`` is completely written and intact.

    Parameters
    ----------
    path
        The file (plain or RICE-compressed multi-extension FITS).
    expected_extnames
        Extension names that must be present when the primary header has no NEXTEND (the
        configured CCD list). With NEXTEND, at least NEXTEND extensions must be present.
    verify_checksum
        Verify CHECKSUM / DATASUM of each HDU that has them (only once the structure is complete).

    Returns
    -------
    Completeness
        ``incomplete`` when the file may still grow (shorter than its structure, missing
        extensions), ``corrupt`` when it cannot become valid by growing (not FITS, bad
        header, trailing garbage, a checksum mismatch), else ``complete``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        fh = path.open("rb")
    except FileNotFoundError:
        return Completeness("incomplete", f"{path}: file is gone", 0)
    except OSError as exc:
        return Completeness("incomplete", f"{path}: cannot read ({exc.strerror})", 0)
    hdus: list[HduInfo] = []
    nextend: int | None = None
    try:
        with fh:
            if size == 0:
                raise _Incomplete("file is empty")
            offset = 0
            while offset < size:
                first = not hdus
                cards, data_start = _read_header(fh, offset, size, first)
                where = f"HDU {len(hdus)}"
                nbytes = _data_bytes(cards, where)
                if first:
                    ne = cards.get("NEXTEND")
                    nextend = ne if isinstance(ne, int) and not isinstance(ne, bool) else None
                extname = cards.get("EXTNAME")
                checksum, datasum = cards.get("CHECKSUM"), cards.get("DATASUM")
                hdu = HduInfo(len(hdus), offset, data_start, nbytes,
                              str(extname).strip() if extname is not None else None,
                              str(checksum) if checksum is not None else None,
                              str(datasum) if datasum is not None else None)
                hdus.append(hdu)
                if hdu.end > size:
                    raise _Incomplete(f"{where} ends at byte {hdu.end} but the file has {size}")
                offset = hdu.end
            n_ext = len(hdus) - 1
            if nextend is not None:
                if n_ext < nextend:
                    raise _Incomplete(f"{n_ext} of NEXTEND={nextend} extensions present")
            elif expected_extnames:
                present = {h.extname for h in hdus}
                missing = [n for n in expected_extnames if n not in present]
                if missing:
                    raise _Incomplete(f"extensions missing: {', '.join(missing)}")
            verified = _verify_checksums(path, hdus) if verify_checksum else 0
    except _Incomplete as exc:
        return Completeness("incomplete", f"{path}: {exc}", size, tuple(hdus))
    except _Corrupt as exc:
        return Completeness("corrupt", f"{path}: {exc}", size, tuple(hdus))
    except OSError as exc:  # vanished or unreadable while we looked: look again later
        return Completeness("incomplete", f"{path}: cannot read ({exc.strerror})", size)
    return Completeness("complete", "", size, tuple(hdus), verified)
