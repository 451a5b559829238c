"""The secrets gate finds the worker's own secret values encoded, on real git repositories.

The secret is planted the ways an agent told to leak it could write it; each must fail the gate with the
file, line and encoding named and nothing of the value in what the gate says.
"""

from __future__ import annotations

import base64
import codecs
import secrets
import string
from collections.abc import Callable
from pathlib import Path

import pytest

from darkfactory.gates import GateContext
from darkfactory.gates.secret_encodings import encoded_forms, find_encoded_secrets
from darkfactory.gates.secrets import secrets_gate
from tests.conftest import git
from tests.gate_repos import Content, change_context, commit

CALC = "def add(a, b):\n    return a + b\n"


def worker_secret() -> str:
    # Its last bytes ("~~~?") put '+' and '/' into its base64, so base64url differs from base64.
    return "wrk" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(27)) + "~~~?"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(path, {"calc.py": CALC, "README.md": "# calc\n"})
    return path


def context(repo: Path, files: dict[str, Content], secret: str) -> GateContext:
    return change_context(repo, files, secret_values=(secret,))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (encoding named in the finding, the planted line for a secret `s`)
PLANTED: dict[str, tuple[str, Callable[[str], str]]] = {
    "base64": ("base64", lambda s: f'TOKEN = "{b64(s.encode())}"'),
    "base64 inside a blob, offset 1": ("base64", lambda s: f'BLOB = "{b64(b"{" + s.encode() + b"}")}"'),
    "base64 inside a blob, offset 2": ("base64", lambda s: f'BLOB = "{b64(b"k=" + s.encode() + b"&x=1")}"'),
    "base64url": ("base64url", lambda s: f'TOKEN = "{base64.urlsafe_b64encode(s.encode()).decode()}"'),
    "hex": ("hex", lambda s: f'TOKEN = "{s.encode().hex()}"'),
    "hex upper case": ("hex", lambda s: f'TOKEN = "{s.encode().hex().upper()}"'),
    "hex dump": ("hex", lambda s: "# " + " ".join(f"{byte:02x}" for byte in s.encode())),
    "decimal list": ("character codes", lambda s: f"CODES = {list(s.encode())}"),
    "decimal csv": ("character codes", lambda s: "CODES = '" + ",".join(str(byte) for byte in s.encode()) + "'"),
    "chr() chain": ("character codes", lambda s: "TOKEN = " + "+".join(f"chr({ord(char)})" for char in s)),
    "0x list": ("character codes", lambda s: "CODES = [" + ", ".join(f"0x{byte:02x}" for byte in s.encode()) + "]"),
    "\\x escapes": (
        "character escapes",
        lambda s: 'TOKEN = "' + "".join(f"\\x{byte:02x}" for byte in s.encode()) + '"',
    ),
    "reversed": ("reversed", lambda s: f'TOKEN = "{s[::-1]}"[::-1]'),
    "percent-encoded": (
        "URL-percent-encoded",
        lambda s: "URL = 'https://x.test/?k=" + "".join(f"%{b:02X}" for b in s.encode()) + "'",
    ),
    "rot13": ("rot13", lambda s: f'TOKEN = codecs.decode("{codecs.encode(s, "rot13")}", "rot13")'),
    "split across strings": ("split across strings", lambda s: f'TOKEN = "{s[:10]}" + "{s[10:20]}" "{s[20:]}"'),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_encoded_worker_secret_fails_the_gate_without_showing_it(repo: Path, name: str) -> None:
    value = worker_secret()
    encoding, plant = PLANTED[name]
    planted = plant(value)
    ctx = context(repo, {"calc.py": CALC + "\n" + planted + "\n"}, value)

    result = secrets_gate(ctx)

    assert not result.passed
    line = next(line for line in result.feedback.splitlines() if line.startswith("- calc.py:4: "))
    assert f"worker secret value, {encoding}" in line
    assert "…" not in line  # no excerpt, not even from another scanner: it would be an excerpt of the secret
    assert result.details_ref is not None
    said = (result.summary, result.feedback, ctx.blobs.get_text(result.details_ref))
    for text in said:
        assert value not in text and value[4:] not in text
        assert all(form not in text for _encoding, form in encoded_forms(value))


def test_base64_wrapped_over_lines_is_found_on_its_first_line(repo: Path) -> None:
    value = worker_secret()
    blob = b64(b"-----BEGIN CONFIG-----\n" + value.encode() + b"\nmore configuration follows here\n")
    wrapped = "\n".join(blob[at : at + 20] for at in range(0, len(blob), 20))

    result = secrets_gate(context(repo, {"config.txt": wrapped + "\n"}, value))

    assert not result.passed
    assert "worker secret value, base64" in result.feedback
    assert value not in result.feedback


def test_encoded_secret_in_a_binary_file_fails(repo: Path) -> None:
    value = worker_secret()
    blob = b"\x00\x01" + b64(value.encode()).encode() + b"\xff"

    result = secrets_gate(context(repo, {"blob.bin": blob}, value))

    assert not result.passed
    assert "- blob.bin:1: worker secret value, base64" in result.feedback


def test_change_with_numbers_escapes_and_base64_but_no_secret_passes(repo: Path) -> None:
    value = worker_secret()
    change = (
        CALC
        + "\n\nGREETING = [104, 101, 108, 108, 111]\n"
        + 'NEWLINE = "\\x0a"\n'
        + f'HELLO = "{b64(b"hello world")}"\n'
        + "QUERY = 'a%20b'\n"
    )

    result = secrets_gate(context(repo, {"calc.py": change}, value))

    assert result.passed, result.feedback


# --------------------------------------------------------------------------------------------------
# The search itself


def test_base64_is_found_at_every_alignment_inside_a_longer_blob() -> None:
    value = worker_secret()
    for prefix in (b"", b"a", b"ab", b"abc"):
        blob = b64(prefix + value.encode() + b"tail")

        matches = find_encoded_secrets(f"x = '{blob}'", [value])

        assert [match.encoding for match in matches] == ["base64"], prefix
        assert 5 <= matches[0].start < matches[0].end <= 5 + len(blob)


def test_spans_cover_the_encoded_form_in_the_original_text() -> None:
    value = worker_secret()
    text = "codes: " + ", ".join(str(byte) for byte in value.encode()) + " end"

    (match,) = find_encoded_secrets(text, [value])

    assert text[match.start : match.end] == ", ".join(str(byte) for byte in value.encode())
    assert match.secret == 0


def test_verbatim_short_and_unrelated_text_is_not_an_encoded_finding() -> None:
    value = worker_secret()
    text = f"{value}\nhello = [1, 2, 3]\nsha = 3f2a9c1b7d4e5f60718293a4b5c6d7e8f9a0b1c2\n"

    assert find_encoded_secrets(text, [value, "short"]) == []
    assert find_encoded_secrets(b64(b"short"), ["short"]) == []
