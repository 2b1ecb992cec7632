"""Media types with parameters, and ``multipart/related`` bodies, both ways.

PS3.18 §8.6.1.2 packs DICOMweb payloads as ``multipart/related`` (RFC 2387)
with the generic multipart syntax of RFC 2046 §5.1.1::

    body      := [preamble CRLF] dash-boundary transport-padding CRLF part
                 *(CRLF dash-boundary transport-padding CRLF part)
                 CRLF dash-boundary "--" transport-padding [CRLF epilogue]
    part      := *(header CRLF) CRLF content

Parsing looks for delimiters with ``bytes.find`` (never a regular expression
over the body) and hands out each part's content as a ``memoryview`` into
the received buffer, so a 256 MiB STOW-RS body is not copied again.
Content-Type values follow RFC 9110 §8.3.1: ``type/subtype *(; name=value)``,
names case-insensitive, values a token or a quoted-string.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dicomcloud.errors import InvalidInput, UnsupportedMediaType

CRLF = b"\r\n"
_LWSP = b" \t"
_MAX_BOUNDARY = 70  # RFC 2046 §5.1.1
_BCHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
_TOKEN_SPECIALS = frozenset('()<>@,;:\\"/[]?={} \t')


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed media type: lower-cased ``type``/``subtype``, parameter names lower-cased.

    Parameter values keep their case (a boundary is case-sensitive); the
    ``type`` and ``transfer-syntax`` values are compared case-insensitively
    by the callers that care.
    """

    type: str
    subtype: str
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def essence(self) -> str:
        """``type/subtype`` without parameters."""
        return f"{self.type}/{self.subtype}"

    def param(self, name: str) -> str | None:
        return self.params.get(name.lower())

    def __str__(self) -> str:
        return self.essence + "".join(f"; {name}={format_param_value(value)}" for name, value in self.params.items())


def format_param_value(value: str) -> str:
    """A parameter value as a token when possible, else as a quoted-string."""
    if value and not any(c in _TOKEN_SPECIALS or ord(c) < 33 or ord(c) > 126 for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_unquoted(text: str, separator: str) -> list[str]:
    """Split ``text`` at ``separator`` outside quoted-strings (backslash escapes honoured)."""
    pieces: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        escaped = False
        for char in inner:
            if escaped:
                out.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            else:
                out.append(char)
        return "".join(out)
    return value


def parse_media_type(text: str) -> MediaType:
    """Parse ``type/subtype; name=value; ...`` (RFC 9110 §8.3.1).

    Raises :class:`InvalidInput` with the offending text when it is not a
    media type. ``*`` alone (sent by some clients in Accept) is read as ``*/*``.
    """
    pieces = split_unquoted(text, ";")
    essence = pieces[0].strip().lower()
    if essence == "*":
        essence = "*/*"
    main, slash, sub = essence.partition("/")
    if not slash or not main or not sub or any(c in _TOKEN_SPECIALS for c in main + sub):
        raise InvalidInput(f"{text.strip()!r} is not a media type (expected type/subtype)")
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        piece = piece.strip()
        if not piece:
            continue  # tolerate "a/b; ; c=d" and a trailing ";"
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise InvalidInput(f"media type parameter {piece!r} in {text.strip()!r} is not name=value")
        params[name] = _unquote(value.strip())
    return MediaType(main, sub, MappingProxyType(params))


def parse_content_type(header: str | None) -> MediaType:
    """The request's Content-Type; a missing or unparsable one is :class:`UnsupportedMediaType`."""
    if header is None or not header.strip():
        raise UnsupportedMediaType("the request has no Content-Type header")
    try:
        return parse_media_type(header)
    except InvalidInput as exc:
        raise UnsupportedMediaType(f"Content-Type {exc.reason}") from exc


def multipart_related_type(part_type: str, boundary: str, **params: str) -> str:
    """The Content-Type of a ``multipart/related`` response (PS3.18 §8.7.3.5.1)."""
    extra = "".join(f"; {name.replace('_', '-')}={format_param_value(v)}" for name, v in params.items())
    return f'multipart/related; type="{part_type}"; boundary={format_param_value(boundary)}{extra}'


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: header fields (names lower-cased) and the content, not copied."""

    headers: Mapping[str, str]
    content: bytes | memoryview

    @classmethod
    def of(cls, content_type: str, content: bytes | memoryview, **headers: str) -> Part:
        """A part to encode; ``content_location="..."`` becomes ``Content-Location``."""
        fields = {"content-type": content_type}
        fields.update({name.replace("_", "-").lower(): value for name, value in headers.items()})
        return cls(MappingProxyType(fields), content)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def media_type(self) -> MediaType | None:
        """The part's parsed Content-Type, or ``None`` when it has none."""
        value = self.content_type
        return None if value is None else parse_media_type(value)


def new_boundary() -> str:
    """A fresh random boundary (RFC 2046 §5.1.1: at most 70 characters)."""
    return "dicomcloud-" + secrets.token_hex(16)


def _check_boundary(boundary: str | None) -> bytes:
    if boundary is None or boundary == "":
        raise UnsupportedMediaType("multipart/related Content-Type has no boundary parameter")
    if len(boundary) > _MAX_BOUNDARY:
        raise InvalidInput(f"multipart boundary is {len(boundary)} characters; RFC 2046 allows 70")
    if not set(boundary) <= _BCHARS or boundary.endswith(" "):
        raise InvalidInput(f"multipart boundary {boundary!r} has characters RFC 2046 does not allow")
    return boundary.encode("ascii")


def _parse_headers(block: bytes | memoryview, index: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for raw in bytes(block).split(CRLF):
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and last is not None:  # obsolete line folding
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise InvalidInput(f"part {index} has a malformed header line {line[:80]!r}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        last = name
    return headers


def _delimiter_end(data: bytes | bytearray, pos: int, size: int) -> tuple[int, bool] | None:
    """After a ``--boundary`` ending at ``pos``: (start of next part, is_close) or None.

    None means the boundary text continues (it was a prefix of other content),
    so this was not a delimiter.
    """
    if data[pos : pos + 2] == b"--":
        return pos + 2, True
    end = pos
    while end < size and data[end] in _LWSP:  # transport padding
        end += 1
    if data[end : end + 2] == CRLF:
        return end + 2, False
    return None


def parse_multipart_related(body: bytes | bytearray | memoryview, content_type: str) -> list[Part]:
    """Split a ``multipart/related`` body (RFC 2387, RFC 2046 §5.1) into its parts.

    ``content_type`` is the whole Content-Type header value; its
    ``boundary`` parameter is required. Part contents are memoryviews into
    ``body`` (a ``memoryview`` argument is copied once to search it).
    Raises :class:`UnsupportedMediaType` when it is not multipart or has no
    boundary, :class:`InvalidInput` for a malformed or truncated body.
    """
    media = parse_content_type(content_type)
    if media.type != "multipart":
        raise UnsupportedMediaType(f"{media.essence} is not a multipart media type")
    dash = b"--" + _check_boundary(media.param("boundary"))
    data: bytes | bytearray = bytes(body) if isinstance(body, memoryview) else body
    view = memoryview(data)
    size = len(data)
    delimiter = CRLF + dash

    # The first dash-boundary: at the very start, or after a preamble and CRLF.
    if data.startswith(dash):
        found = 0
    else:
        found = data.find(delimiter)
        found = -1 if found < 0 else found + 2
    while True:
        if found < 0:
            raise InvalidInput(
                f"multipart body has no delimiter line --{dash[2:].decode()} (wrong boundary, or not a multipart body)"
            )
        after = _delimiter_end(data, found + len(dash), size)
        if after is not None:
            break
        found = data.find(delimiter, found + 1)
        found = -1 if found < 0 else found + 2

    parts: list[Part] = []
    start, closed = after
    while not closed:
        index = len(parts) + 1
        # headers end at the first empty line; a part may have no headers at all.
        if data[start : start + 2] == CRLF:
            headers: dict[str, str] = {}
            content_start = start + 2
        else:
            head_end = data.find(CRLF + CRLF, start)
            if head_end < 0:
                raise InvalidInput(f"part {index} of the multipart body ends inside its headers (truncated)")
            headers = _parse_headers(view[start:head_end], index)
            content_start = head_end + 4
        search = content_start
        while True:
            hit = data.find(delimiter, search)
            if hit < 0:
                raise InvalidInput(
                    f"multipart body ends inside part {index} without the closing delimiter "
                    f"--{dash[2:].decode()}-- (truncated body?)"
                )
            after = _delimiter_end(data, hit + len(delimiter), size)
            if after is not None:
                break
            search = hit + 1
        parts.append(Part(MappingProxyType(headers), view[content_start:hit]))
        start, closed = after
    return parts


def _header_name(name: str) -> str:
    return "-".join(word.capitalize() for word in name.split("-"))


def encode_multipart_related(parts: Iterable[Part], boundary: str) -> Iterator[bytes | memoryview]:
    """Yield a ``multipart/related`` body chunk by chunk, for a streaming response.

    Each part's headers (Content-Type first, then e.g. Content-Location) are
    written before its content; contents are yielded as given, not copied.
    The response's own Content-Type comes from :func:`multipart_related_type`.
    """
    dash = b"--" + _check_boundary(boundary)
    first = True
    for part in parts:
        lines = [(b"" if first else CRLF) + dash]
        for name, value in part.headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"header {name} of a part contains a line break")
            lines.append(f"{_header_name(name)}: {value}".encode("latin-1"))
        yield CRLF.join(lines) + CRLF + CRLF
        if len(part.content):
            yield part.content
        first = False
    yield (b"" if first else CRLF) + dash + b"--" + CRLF
