"""Where a known secret sits in a text encoded: base64, hex, character codes, escapes, reversed, rot13, split.

An exact match is trivially evaded: a model told by an injected instruction to leak a key can write it
base64-encoded or as a list of character codes, and no format regex sees it. Decoding everything that might
be an encoding is unbounded and noisy, so the direction is reversed: each secret is encoded the few ways that
matter, and those forms are searched for, in the text and in three views of it:

- squeezed: whitespace, quotes, commas, `+` and a few more removed, so a form split across string literals,
  wrapped lines or a hex dump (`73 6b 2d`, `73:6b:2d`) is still one run;
- unescaped: `\\xNN`, `\\uNNNN`, `\\NNN`, `%NN`, `&#NN;` decoded in place, so a secret partly or wholly escaped
  (or URL-percent-encoded) is found;
- character codes: runs of numbers (`[115, 107, 45]`, `chr(115)+chr(107)`, `0x73, 0x6b`) read as code points.

Base64 is searched at all three byte alignments, so a secret inside a longer encoded blob is found too. Matches
are spans of the original text: the secrets gate reports their line, `darkfactory.untrusted` replaces them.
Nothing here returns or prints the secret itself.
"""

from __future__ import annotations

import base64
import codecs
import itertools
import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

MIN_FORM_LENGTH = 8
"""Shorter encoded forms (or secrets) would match ordinary text."""

# Characters a base64 or hex form never contains but a split or wrapped one is interleaved with.
_SQUEEZED_OUT = re.compile(r"[\s'\"`+,;:\\]+")
_KEPT = re.compile(r"[^\s'\"`+,;:\\]+")
# A base64 character that carries only bits of the secret starts after the bits of `skip` leading bytes.
_FIRST_FULL_CHAR = (0, 2, 3)
_URLSAFE = str.maketrans("+/", "-_")
_ASCII_LOWER = str.maketrans("ABCDEF", "abcdef")

_ESCAPE = re.compile(
    r"\\x(?P<x>[0-9a-fA-F]{2})|\\u\{(?P<ub>[0-9a-fA-F]{1,6})\}|\\u(?P<u>[0-9a-fA-F]{4})|\\U(?P<U>[0-9a-fA-F]{8})"
    r"|\\(?P<oct>[0-7]{3})|&#[xX](?P<hx>[0-9a-fA-F]{1,6});|&#(?P<hd>[0-9]{1,7});|%(?P<pct>[0-9a-fA-F]{2})"
)
_NUMBER = re.compile(_ESCAPE.pattern + r"|\b0[xX](?P<hex>[0-9a-fA-F]{1,6})\b|(?<![\w.])(?P<dec>[0-9]{1,7})(?![\w.])")
_BASE = {"x": 16, "ub": 16, "u": 16, "U": 16, "oct": 8, "hx": 16, "hd": 10, "pct": 16, "hex": 16, "dec": 10}
_KIND = {"hx": "html", "hd": "html", "pct": "percent", "hex": "", "dec": ""}
"""Per group, the kind of token: "" for a plain number, "escape" for the groups not listed."""
_GAP = re.compile(r"[^0-9]{0,24}", re.DOTALL)
"""What may separate two character codes of one run: `, `, `)+chr(`, `, 0x`, a line break and indentation."""


@dataclass(frozen=True, order=True)
class EncodedMatch:
    """Characters [start, end) of the searched text hold secret number `secret` (an index), in `encoding`."""

    start: int
    end: int
    encoding: str
    secret: int


def encoded_forms(secret: str) -> list[tuple[str, str]]:
    """(encoding, form) pairs: the strings that stand for `secret` in each encoding searched for as a substring.

    Base64 forms drop the characters that also depend on neighbouring bytes, so they match inside a longer
    blob whatever precedes and follows the secret. Hex is lower case (the search lowers the text).
    """
    raw = secret.encode()
    forms = [("reversed", secret[::-1]), ("rot13", codecs.encode(secret, "rot13")), ("hex", raw.hex())]
    for skip in range(3):
        encoded = base64.b64encode(bytes(skip) + raw).decode("ascii")
        piece = encoded[_FIRST_FULL_CHAR[skip] : 8 * (skip + len(raw)) // 6]
        forms.append(("base64", piece))
        if (urlsafe := piece.translate(_URLSAFE)) != piece:
            forms.append(("base64url", urlsafe))
    unique = dict.fromkeys(forms)
    return [(encoding, form) for encoding, form in unique if form != secret and len(form) >= MIN_FORM_LENGTH]


def find_encoded_secrets(text: str, secrets: Sequence[str]) -> list[EncodedMatch]:
    """Every encoded occurrence of each secret (at least `MIN_FORM_LENGTH` long) in `text`, sorted.

    A verbatim occurrence is not reported (an exact search finds it), but one split by quotes or whitespace
    is ("split across strings"), and so is one with some characters escaped.
    """
    values = [(index, value) for index, value in enumerate(secrets) if len(value) >= MIN_FORM_LENGTH]
    if not values:
        return []
    found: set[EncodedMatch] = set()
    squeezed, positions = _squeezed(text)
    lowered = squeezed.translate(_ASCII_LOWER)
    for index, value in values:
        for encoding, form in encoded_forms(value):
            needle = _SQUEEZED_OUT.sub("", form)
            if len(needle) < MIN_FORM_LENGTH:
                continue
            haystack = lowered if encoding == "hex" else squeezed
            for at in _occurrences(haystack, needle):
                found.add(EncodedMatch(positions[at], positions[at + len(needle) - 1] + 1, encoding, index))
        needle = _SQUEEZED_OUT.sub("", value)
        if len(needle) >= MIN_FORM_LENGTH:
            for at in _occurrences(squeezed, needle):
                start, end = positions[at], positions[at + len(needle) - 1] + 1
                if text[start:end] != value:
                    found.add(EncodedMatch(start, end, "split across strings", index))
    found.update(_unescaped_matches(text, values))
    found.update(_character_code_matches(text, values))
    return sorted(found)


def _occurrences(haystack: str, needle: str) -> Iterator[int]:
    at = haystack.find(needle)
    while at >= 0:
        yield at
        at = haystack.find(needle, at + 1)


def _squeezed(text: str) -> tuple[str, array[int]]:
    """The text without the squeezed-out characters, and each kept character's offset in `text`."""
    parts: list[str] = []
    positions = array("q")
    for kept in _KEPT.finditer(text):
        parts.append(kept.group())
        positions.extend(range(kept.start(), kept.end()))
    return "".join(parts), positions


def _code_point(match: re.Match[str]) -> tuple[int, str]:
    """The number a token stands for, and the kind of token ("", "escape", "html", "percent")."""
    group = match.lastgroup or ""
    return int(match.group(group), _BASE[group]), _KIND.get(group, "escape")


def _unescaped_matches(text: str, values: Sequence[tuple[int, str]]) -> Iterator[EncodedMatch]:
    """Secrets in the text with its escapes decoded in place.

    Escapes decode to single code points, and `%NN` to one byte read as Latin-1: the worker's credentials
    are ASCII tokens, so their percent-encoded bytes are their characters.
    """
    if _ESCAPE.search(text) is None:
        return
    chars: list[str] = []
    starts, ends = array("q"), array("q")
    kinds: list[str] = []
    done = 0
    for escape in _ESCAPE.finditer(text):
        chars.append(text[done : escape.start()])
        starts.extend(range(done, escape.start()))
        ends.extend(range(done + 1, escape.start() + 1))
        kinds.extend([""] * (escape.start() - done))
        number, kind = _code_point(escape)
        chars.append(chr(number) if number <= 0x10FFFF else "\ufffd")
        starts.append(escape.start())
        ends.append(escape.end())
        kinds.append(kind)
        done = escape.end()
    chars.append(text[done:])
    starts.extend(range(done, len(text)))
    ends.extend(range(done + 1, len(text) + 1))
    kinds.extend([""] * (len(text) - done))
    view = "".join(chars)
    for index, value in values:
        for needle, reversed_ in ((value, False), (value[::-1], True)):
            if reversed_ and needle == value:
                continue
            for at in _occurrences(view, needle):
                used = {kind for kind in kinds[at : at + len(needle)] if kind}
                if not used:
                    continue  # found verbatim (or reversed) by the other searches
                name = {"percent": "URL-percent-encoded", "html": "HTML character references"}.get(
                    used.pop() if len(used) == 1 else "", "character escapes"
                )
                yield EncodedMatch(
                    starts[at], ends[at + len(needle) - 1], name + (", reversed" if reversed_ else ""), index
                )


def _character_code_matches(text: str, values: Sequence[tuple[int, str]]) -> Iterator[EncodedMatch]:
    """Secrets spelled as runs of character codes separated by punctuation (a list, a chr() chain)."""
    run: list[tuple[str, int, int, str]] = []
    previous_end = -1
    for token in _NUMBER.finditer(text):
        if run and not _GAP.fullmatch(text, previous_end, token.start()):
            yield from _search_run(run, values)
            run = []
        number, kind = _code_point(token)
        if number > 0x10FFFF:
            yield from _search_run(run, values)
            run = []
        else:
            run.append((chr(number), token.start(), token.end(), kind))
        previous_end = token.end()
    yield from _search_run(run, values)


def _search_run(run: Sequence[tuple[str, int, int, str]], values: Sequence[tuple[int, str]]) -> Iterator[EncodedMatch]:
    if len(run) < MIN_FORM_LENGTH:
        return
    spelled = "".join(char for char, _start, _end, _kind in run)
    for index, value in values:
        for needle, reversed_ in ((value, False), (value[::-1], True)):
            if reversed_ and needle == value:
                continue
            for at in _occurrences(spelled, needle):
                tokens = run[at : at + len(needle)]
                contiguous = all(a[2] == b[1] for a, b in itertools.pairwise(tokens))
                if contiguous and all(kind for *_rest, kind in tokens):
                    continue  # a bare run of escapes is the unescaped view's finding
                encoding = "character codes" + (", reversed" if reversed_ else "")
                yield EncodedMatch(tokens[0][1], tokens[-1][2], encoding, index)
