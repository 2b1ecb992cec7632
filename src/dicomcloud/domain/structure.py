"""The encoding structure of a data set (PS3.5 §7), checked without decoding values.

Ingest files an instance from its first elements only (``part10.py``); this walk
of every element header (tag, VR, length) to the end of the data set is what
makes sure the rest will read too, so that an instance acknowledged to its
sender can be indexed. Cheap: a few struct unpacks per element, values skipped.

Refused, with the tag and byte offset in the reason:

- a value whose length runs past the end of the data set, item or sequence;
- a data set that ends inside an element header;
- an explicit VR that does not exist (PS3.5 §6.2);
- a binary value whose length is not a multiple of its VR's size (US of 3 bytes);
- undefined length on anything but a sequence, UN (PS3.5 §6.2.2) or encapsulated
  Pixel Data (PS3.5 §A.4);
- a sequence or item that does not close, anything but Items in a sequence or
  in encapsulated Pixel Data, a delimiter outside what it delimits (PS3.5 §7.5);
- at the top level: Command (0000,xxxx) or File Meta (0002,xxxx) elements, and
  any element up to (0020,000E) SeriesInstanceUID *after* an element beyond it
  (PS3.5 §7.1 orders elements by tag; filing reads only up to there).

Tolerant as pydicom is when reading: odd lengths of text values, items encoded
in implicit VR inside an explicit VR data set, an explicit VR element whose VR
bytes are not letters read as implicit VR, a data set whose first element
contradicts the transfer syntax's implicit / explicit VR, elements otherwise out
of order, and values that are valid structure but nonsense (they are left out
when indexing, ``header.py``).
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from pydicom import datadict
from pydicom.datadict import keyword_for_tag

from dicomcloud.errors import MalformedDicom

UNDEFINED: Final = 0xFFFFFFFF
ITEM: Final = 0xFFFEE000
ITEM_DELIMITER: Final = 0xFFFEE00D
SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
PIXEL_DATA: Final = 0x7FE00010
SERIES_INSTANCE_UID: Final = 0x0020000E
MAX_DEPTH: Final = 64  # nested sequences; pydicom and the stack need a bound

_TEXT = (b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"PN", b"SH", b"ST", b"TM", b"UI")
_LONG_TEXT = (b"OB", b"UC", b"UN", b"UR", b"UT")
# explicit VR -> (header length, size of one value (the length is a multiple of it), is a sequence)
_EXPLICIT: Final[dict[bytes, tuple[int, int, bool]]] = {
    **{vr: (8, 1, False) for vr in _TEXT},
    **{vr: (8, 2, False) for vr in (b"US", b"SS")},
    **{vr: (8, 4, False) for vr in (b"UL", b"SL", b"FL", b"AT")},
    b"FD": (8, 8, False),
    **{vr: (12, 1, False) for vr in _LONG_TEXT},
    b"SQ": (12, 1, True),
    b"OW": (12, 2, False),
    **{vr: (12, 4, False) for vr in (b"OF", b"OL")},
    **{vr: (12, 8, False) for vr in (b"OD", b"OV", b"SV", b"UV")},
}
# dictionary VR (implicit VR) -> size of one value; 1 when not listed
_UNIT: Final[dict[str, int]] = {
    **{vr: 2 for vr in ("US", "SS", "OW", "US or SS", "US or OW", "US or SS or OW")},
    **{vr: 4 for vr in ("UL", "SL", "FL", "AT", "OF", "OL")},
    **{vr: 8 for vr in ("FD", "OD", "OV", "SV", "UV")},
}
# tag -> (VR, VM, name, retired, keyword): a dict lookup, the fastest way to the VR of a tag
_DICTIONARY: Final = datadict.DicomDictionary.get  # type: ignore[attr-defined]  # not re-exported
_STRUCTS = {
    little: (Struct(order + "HH2sH").unpack_from, Struct(order + "HHI").unpack_from, Struct(order + "I").unpack_from)
    for little, order in ((True, "<"), (False, ">"))
}


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag) if tag >> 16 & 1 == 0 else ""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}){' ' + keyword if keyword else ''}"


def _bytes(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _vr_text(vr: bytes) -> str:
    """A VR for a reason text: 'OO', or its bytes in hex (an ErrorComment holds no backslash)."""
    return f"'{vr.decode()}'" if vr.isalnum() else " ".join(f"0x{b:02X}" for b in vr)


class _Walk:
    """One data set's bytes and its byte order; the walk is the methods below."""

    __slots__ = ("buf", "explicit", "filing_end", "implicit", "u32")

    def __init__(self, buf: bytes | memoryview, little: bool) -> None:
        self.buf = buf
        self.explicit, self.implicit, self.u32 = _STRUCTS[little]
        self.filing_end = len(buf)  # where the first top-level element beyond (0020,000E) starts

    def fail(self, pos: int, what: str) -> MalformedDicom:
        return MalformedDicom(f"{what} (at byte {pos} of the data set)")

    def elements(self, pos: int, end: int, implicit: bool, depth: int, top: bool, open_item: bool) -> int:
        """Walk the elements of a data set from ``pos`` to ``end`` (or, ``open_item``, to
        its Item Delimitation Item); return where the next thing starts."""
        buf, explicit_head, implicit_head, u32 = self.buf, self.explicit, self.implicit, self.u32
        past_filing = False
        while pos < end:
            if pos + 8 > end:
                where = "the data set" if top else "an item"
                raise self.fail(pos, f"{where} ends {_bytes(end - pos)} into an element header")
            if implicit:
                group, element, length = implicit_head(buf, pos)
                vr = None
            else:
                group, element, vr, length = explicit_head(buf, pos)
            tag = group << 16 | element
            if tag <= SERIES_INSTANCE_UID:
                if top and (past_filing or group == 0x0000 or group == 0x0002):
                    if past_filing:
                        raise self.fail(pos, f"{_name(tag)} after elements beyond (0020,000E): out of order")
                    raise self.fail(pos, f"{_name(tag)}: a command or file meta element in the data set")
            elif top and not past_filing:
                past_filing = True
                self.filing_end = pos
            if group == 0xFFFE:  # items and delimiters have no VR
                if tag == ITEM_DELIMITER and (open_item or pos + 8 == end):
                    return pos + 8
                raise self.fail(pos, f"{_name(tag)} outside what it delimits")
            if vr is not None:
                info = _EXPLICIT.get(vr)
                if info is not None:
                    header, unit, is_sequence = info
                    if header == 12:
                        if pos + 12 > end:
                            raise self.fail(pos, f"{_name(tag)}: the data ends inside its header")
                        length = u32(buf, pos + 8)[0]
                elif b"AA" <= vr <= b"ZZ":
                    raise self.fail(pos, f"{_name(tag)}: unknown VR {_vr_text(vr)}")
                else:  # not letters: an implicit VR element, as pydicom reads it
                    vr = None
                    length = u32(buf, pos + 4)[0]
            if vr is None:
                header = 8
                entry = _DICTIONARY(tag)
                dictionary_vr = entry[0] if entry is not None else ""
                unit = _UNIT.get(dictionary_vr, 1)
                is_sequence = dictionary_vr == "SQ"
            start = pos + header
            if length == UNDEFINED:
                if tag == PIXEL_DATA and top:
                    pos = self.fragments(start, end)
                elif is_sequence or vr == b"UN" or (vr is None and not dictionary_vr and self.item_follows(start, end)):
                    pos = self.sequence(tag, start, end, UNDEFINED, depth, implicit)
                else:
                    raise self.fail(pos, f"{_name(tag)}: undefined length, but not a sequence or Pixel Data")
                continue
            value_end = start + length
            if value_end > end:
                where = "the data set" if top else "its item"
                raise self.fail(pos, f"{_name(tag)}: length {length} ends {_bytes(value_end - end)} past {where}")
            if unit > 1 and length % unit:
                raise self.fail(pos, f"{_name(tag)}: length {length} is not a multiple of {unit} as its VR needs")
            if is_sequence and length:
                self.sequence(tag, start, value_end, length, depth, implicit)
            pos = value_end
        if open_item:
            raise self.fail(pos, "an item of undefined length does not end (no Item Delimitation Item)")
        return pos

    def item_follows(self, pos: int, end: int) -> bool:
        """Whether an Item starts at ``pos``: how pydicom tells a sequence of a tag it does not know."""
        if pos + 8 > end:
            return False
        group, element, _ = self.implicit(self.buf, pos)
        return bool((group << 16 | element) == ITEM)

    def sequence(self, tag: int, pos: int, end: int, length: int, depth: int, implicit: bool) -> int:
        """Walk the items of the sequence ``tag`` whose value starts at ``pos``; in an
        explicit VR data set, an item may be in implicit VR (how pydicom reads UN, PS3.5 §6.2.2)."""
        if depth >= MAX_DEPTH:
            raise self.fail(pos, f"{_name(tag)}: sequences nested deeper than {MAX_DEPTH}")
        stop = end if length == UNDEFINED else pos + length
        number = 0
        while True:
            if pos + 8 > stop:
                if length != UNDEFINED and pos == stop:
                    return pos
                if length == UNDEFINED:
                    raise self.fail(pos, f"{_name(tag)}: the sequence does not end (no Sequence Delimitation Item)")
                raise self.fail(pos, f"{_name(tag)}: the sequence ends inside an item header")
            group, element, item_length = self.implicit(self.buf, pos)
            item_tag = group << 16 | element
            if item_tag == SEQUENCE_DELIMITER and length == UNDEFINED:
                return pos + 8
            if item_tag != ITEM:
                raise self.fail(pos, f"{_name(tag)}: ({group:04X},{element:04X}) where an item must be")
            number += 1
            pos += 8
            item_implicit = implicit or looks_implicit(self.buf, pos, stop)
            if item_length == UNDEFINED:
                pos = self.elements(pos, stop, item_implicit, depth + 1, False, True)
            else:
                item_end = pos + item_length
                if item_end > stop:
                    past = _bytes(item_end - stop)
                    raise self.fail(pos - 8, f"{_name(tag)}: item {number} runs {past} past the end of the sequence")
                self.elements(pos, item_end, item_implicit, depth + 1, False, False)
                pos = item_end

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated Pixel Data: Items of defined length, then a Sequence Delimitation Item (PS3.5 §A.4);
        fragment 0 is the Basic Offset Table."""
        number = 0
        while True:
            if pos + 8 > end:
                raise self.fail(pos, "(7FE0,0010) PixelData: the fragments do not end (no Sequence Delimitation Item)")
            group, element, length = self.implicit(self.buf, pos)
            tag = group << 16 | element
            if tag == SEQUENCE_DELIMITER:
                return pos + 8
            if tag != ITEM:
                raise self.fail(pos, f"(7FE0,0010) PixelData: ({group:04X},{element:04X}) where a fragment must be")
            if length == UNDEFINED:
                raise self.fail(pos, f"(7FE0,0010) PixelData: fragment {number} of undefined length")
            if pos + 8 + length > end:
                raise self.fail(pos, f"(7FE0,0010) PixelData: fragment {number} runs past the end")
            pos += 8 + length
            number += 1


def looks_implicit(buf: bytes | memoryview, pos: int, end: int | None = None) -> bool:
    """Whether the element at ``pos`` has no VR letters: implicit VR, as pydicom decides
    for a data set's first element whatever its transfer syntax says."""
    if pos + 6 > (len(buf) if end is None else end):
        return False
    return not (0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B)


def check_dataset(buf: bytes | memoryview, *, implicit: bool, little: bool, start: int = 0) -> int:
    """Walk the data set in ``buf[start:]`` to its end; :class:`MalformedDicom` names what is
    wrong. Returns where its first element beyond (0020,000E) SeriesInstanceUID starts
    (``len(buf)`` if none): what comes before is all that files the instance."""
    if len(buf) >= start + 6:
        implicit = looks_implicit(buf, start)  # pydicom's choice too, whatever the transfer syntax says
    walk = _Walk(buf, little)
    walk.elements(start, len(buf), implicit, 0, True, False)
    return walk.filing_end


def file_meta_end(buf: bytes | memoryview, start: int = 132) -> int:
    """Where the data set starts: after the File Meta Information elements (0002,xxxx)
    from ``start`` on (PS3.10 §7.1); explicit VR little endian, implicit tolerated as by pydicom."""
    walk = _Walk(buf, True)
    implicit = looks_implicit(buf, start)
    pos, end = start, len(buf)
    while pos + 8 <= end:
        group, element, vr, length = walk.explicit(buf, pos)
        if group != 0x0002:
            return pos
        tag = group << 16 | element
        info = _EXPLICIT.get(vr)
        if implicit or (info is None and not b"AA" <= vr <= b"ZZ"):
            header, length = 8, walk.u32(buf, pos + 4)[0]
        elif info is None:
            raise MalformedDicom(f"File Meta Information {_name(tag)}: unknown VR {_vr_text(vr)}")
        elif info[0] == 12:
            if pos + 12 > end:
                break
            header, length = 12, walk.u32(buf, pos + 8)[0]
        else:
            header = 8
        if length == UNDEFINED:
            raise MalformedDicom(f"File Meta Information {_name(tag)}: undefined length")
        pos += header + length
        if pos > end:
            raise MalformedDicom(f"File Meta Information {_name(tag)}: length {length} runs past the end")
    if pos != end:
        raise MalformedDicom(f"the File Meta Information ends {end - pos} bytes into an element header")
    return pos
