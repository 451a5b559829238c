"""The secrets gate: no credential and no scanner-suppression marker in the lines a change adds.

Four checks on the added lines only (a secret already on the base is not this change's doing), with line
numbers in the new file (sandbox-and-security-facts §2.2):
(a) the worker's own credential values, matched exactly and in the encodings an evasion would use (base64 at
    every alignment, hex, character codes and escapes, percent-encoding, reversed, rot13, split across string
    literals: `secret_encodings.py`); no false negatives for the keys that matter;
(b) a few high-value formats by regex (Anthropic, AWS, GitHub, Slack, private keys, JWTs);
(c) detect-secrets' default plugins, with its inline-allowlist filter disabled and no baseline, because
    both are ways for the change itself to switch the scan off;
(d) suppression markers (`pragma: allowlist secret`, `gitleaks:allow`, ...) the change adds.
Values are redacted in everything this gate writes. A scanner that fails fails the gate: an unscanned
change is never a passing one.
"""

from __future__ import annotations

import bisect
import re
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.scan import scan_file, scan_line
from detect_secrets.settings import default_settings, transient_settings

from darkfactory.contracts import GateResult
from darkfactory.gates.context import GateContext
from darkfactory.gates.secret_encodings import find_encoded_secrets
from darkfactory.workspace import GitRun

FEEDBACK_LIMIT = 4000
"""Characters of feedback, the same bound as the other gates."""
MAX_LISTED = 25
MIN_SECRET_LENGTH = 8
"""Shorter worker secret values would match ordinary text."""
ENCODED_KIND = "worker secret value, "
"""The kind of a finding of an encoded worker secret starts so, and the encoding follows."""
ALLOWLIST_FILTER = "detect_secrets.filters.allowlist.is_line_allowlisted"

AddedLines = Mapping[str, Sequence[tuple[int, str]]]
"""Per path, the added lines as (line number in the new file, text)."""

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Anthropic API key", re.compile(r"sk-ant-[A-Za-z0-9_-]{20,}")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("GitHub token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}")),
    ("Slack token", re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}")),
    ("private key", re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("OpenAI API key", re.compile(r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}")),
    ("Stripe key", re.compile(r"\b[rs]k_live_[A-Za-z0-9]{16,}")),
)
"""High-value formats, checked whatever detect-secrets' heuristics and filters decide (its indirect-reference
filter drops every finding on a line like `client = OpenAI(api_key="sk-...")`)."""

CONFIG_ASSIGNMENT = re.compile(
    r"(?i)^\s*(?:export\s+)?[A-Za-z0-9_.-]*(?:passw(?:or)?d|secret|token|api[_-]?key|access[_-]?key|auth)[A-Za-z0-9_.-]*"
    r"\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9_\-+/=]{16,})[\"']?\s*$"
)
"""`API_TOKEN=...` in an env or config file: detect-secrets knows no `token` keyword, and its entropy limit lets
about a third of random 32-character tokens through."""
CONFIG_FILE = re.compile(r"(?:^|/)(?:\.env[^/]*|[^/]*\.(?:env|ini|cfg|conf|properties|ya?ml|toml|json|sh))$")

SUPPRESSION = re.compile(
    r"pragma:\s*allowlist|gitleaks:allow|\bnosecret\b|kingfisher:ignore|trufflehog:ignore", re.IGNORECASE
)
"""Inline markers that tell some scanner to look away; a factory change has no business adding one."""

_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")

# detect-secrets keeps its settings in a process-wide singleton, and activities run in threads.
_DETECT_SECRETS_LOCK = threading.Lock()


@dataclass(frozen=True, order=True)
class Finding:
    """One thing found on one added line; `redacted` never holds more than the value's first 4 characters."""

    path: str
    line: int
    kind: str
    redacted: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}" + (f" ({self.redacted})" if self.redacted else "")


def redact(value: str) -> str:
    return value[:4] + "…"


# --------------------------------------------------------------------------------------------------
# The added lines


def added_lines(
    repo_path: str, base_sha: str, sha: str
) -> tuple[dict[str, list[tuple[int, str]]], dict[str, list[tuple[int, str]]]]:
    """The lines the change adds, per text file and per binary file (lines of a binary file are only
    searched for the worker's own secret values: the other scanners would find noise)."""
    run = GitRun(Path(repo_path))
    options = ("--no-renames", "--no-ext-diff", "--no-textconv", "--no-color", "--text")
    # --text: a .gitattributes that marks text as binary (`*.py -diff`) must not hide lines from the scan;
    # binary is decided below from the content itself, as git does without attributes (a NUL byte).
    numstat = run("diff", "--numstat", "-z", *options, base_sha, sha)
    texts: dict[str, list[tuple[int, str]]] = {}
    binary: dict[str, list[tuple[int, str]]] = {}
    for record in numstat.split("\0"):
        if not record:
            continue
        added, _removed, path = record.split("\t", 2)
        # "-" is git's binary verdict, which attributes can fake (and numstat ignores --text): look anyway.
        if added == "0":
            continue
        # One diff per file: the path comes from -z output, so no header (quoted or not) is parsed.
        diff = run("--literal-pathspecs", "diff", "--unified=0", *options, base_sha, sha, "--", path)
        lines = _parse_added(diff)
        if any("\0" in text for _number, text in lines):
            binary[path] = lines
        elif lines:
            texts[path] = lines
    return texts, binary


def _parse_added(diff: str) -> list[tuple[int, str]]:
    added: list[tuple[int, str]] = []
    number = 0
    in_hunk = False
    # split("\n"), not splitlines(): a form feed or \r inside a line must not shift the numbering.
    for raw in diff.split("\n"):
        if raw.startswith("@@"):
            match = _HUNK.match(raw)
            if match is None:
                raise ValueError("unexpected hunk header in git diff output")
            number = int(match.group(1))
            in_hunk = True
        elif not in_hunk:
            continue
        elif raw.startswith("+"):
            added.append((number, raw[1:]))
            number += 1
        elif raw.startswith(" "):
            number += 1
    return added


# --------------------------------------------------------------------------------------------------
# The scans


def scan_added_lines(added: AddedLines, secret_values: Sequence[str] = ()) -> list[Finding]:
    """Checks (a), (b) and (d): worker secrets, high-value formats, suppression markers."""
    findings = set(worker_secret_findings(added, secret_values))
    for path, lines in added.items():
        for number, line in lines:
            for kind, pattern in PATTERNS:
                for match in pattern.finditer(line):
                    findings.add(Finding(path, number, kind, "" if kind == "private key" else redact(match.group())))
            if CONFIG_FILE.search(path):
                assigned = CONFIG_ASSIGNMENT.match(line)
                if assigned and _looks_random(assigned.group("value")):
                    findings.add(Finding(path, number, "credential assignment", redact(assigned.group("value"))))
            marker = SUPPRESSION.search(line)
            if marker:
                findings.add(Finding(path, number, f"suppression marker `{marker.group()}` is not allowed"))
    return sorted(findings)


def _looks_random(value: str) -> bool:
    """Letters and digits mixed, not a placeholder or a name (`changeme`, `${TOKEN}`, `MY_TOKEN_NAME`)."""
    return (
        any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and not value.isupper()
        and len(set(value)) >= 8
    )


def worker_secret_findings(added: AddedLines, secret_values: Sequence[str]) -> list[Finding]:
    """Check (a): the worker's own credential values, verbatim or encoded.

    An encoded finding names the encoding and shows nothing of the value: even a prefix of a base64 form
    gives away bytes of the secret.
    """
    values = sorted({value for value in secret_values if len(value) >= MIN_SECRET_LENGTH})
    findings: set[Finding] = set()
    if not values:
        return []
    for path, lines in added.items():
        # Joined, so a multi-line worker secret (a PEM key), or a form wrapped over lines, is still found.
        text = "\n".join(line for _number, line in lines)
        breaks = [newline.start() for newline in re.finditer("\n", text)]
        for value in values:
            start = text.find(value)
            while start >= 0:
                line = lines[bisect.bisect_left(breaks, start)][0]
                findings.add(Finding(path, line, "worker secret value", redact(value)))
                start = text.find(value, start + 1)
        for match in find_encoded_secrets(text, values):
            line = lines[bisect.bisect_left(breaks, match.start)][0]
            findings.add(Finding(path, line, ENCODED_KIND + match.encoding))
    return sorted(findings)


def detect_secrets_findings(added: AddedLines) -> list[Finding]:
    """Check (c): detect-secrets' default plugins and filters, minus the inline allowlist, with no baseline.

    Each file's added lines are written to a file of the same name (plugins and filters key on the name),
    and its line numbers are mapped back to the new file.
    """
    findings: set[Finding] = set()
    with tempfile.TemporaryDirectory(prefix="df-secrets-") as tmp, _DETECT_SECRETS_LOCK, default_settings() as settings:
        settings.disable_filters(ALLOWLIST_FILTER)
        for index, (path, lines) in enumerate(added.items()):
            if not lines:
                continue
            target = Path(tmp) / str(index) / Path(path).name
            target.parent.mkdir()
            # A lone \r would split a line when Python reads the file back, shifting every later line number.
            body = "".join(text.rstrip("\r").replace("\r", " ") + "\n" for _number, text in lines)
            # errors="replace": detect-secrets silently skips a file it cannot decode; replaced bytes it reads.
            target.write_text(body, encoding="utf-8", errors="replace")
            target.read_text()  # the encoding detect-secrets will open it with; raises instead of skipping
            for secret in scan_file(str(target)):
                number = lines[secret.line_number - 1][0] if 0 < secret.line_number <= len(lines) else 0
                value = secret.secret_value or ""
                findings.add(Finding(path, number, str(secret.type), redact(value) if value else ""))
    return sorted(findings)


def detect_secrets_values(lines: Sequence[str], exclude: Sequence[str] = ()) -> list[tuple[int, str, str]]:
    """(line index, secret type, value) for what detect-secrets' plugins, less those named, find in `lines`.

    For callers outside the gate (`darkfactory.untrusted` redacts prompts with the vendor-format plugins):
    the lock is this module's, because detect-secrets' settings are one process-wide singleton. Some plugins
    report only a token's prefix as its value.
    """
    plugin_classes: list[type] = list(get_mapping_from_secret_type_to_class().values())
    names = [plugin.__name__ for plugin in plugin_classes]
    plugins = [{"name": name} for name in names if name not in exclude]
    found: list[tuple[int, str, str]] = []
    with _DETECT_SECRETS_LOCK, transient_settings({"plugins_used": plugins}) as settings:
        settings.disable_filters(ALLOWLIST_FILTER)
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            found.extend((index, str(secret.type), secret.secret_value or "") for secret in scan_line(line))
    return found


def _merged(findings: list[Finding]) -> list[Finding]:
    """One finding per line: our regexes and detect-secrets often name the same key twice."""
    by_line: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
    # Input order, so our own (more specific) names come before detect-secrets' generic ones.
    for finding in findings:
        kinds, shown = by_line.setdefault((finding.path, finding.line), ([], []))
        if finding.kind.casefold() not in (kind.casefold() for kind in kinds):
            kinds.append(finding.kind)
        if finding.redacted and finding.redacted not in shown:
            shown.append(finding.redacted)
    merged: list[Finding] = []
    for (path, line), (kinds, shown) in by_line.items():
        # detect-secrets reports some values by their prefix only ("ghp"); keep the most telling one.
        stems = [value.rstrip("…") for value in shown]
        kept = [
            value
            for value, stem in zip(shown, stems, strict=True)
            if not any(o.startswith(stem) and o != stem for o in stems)
        ]
        if any(kind.startswith(ENCODED_KIND) for kind in kinds):
            # Another scanner's excerpt of an encoded worker secret is an excerpt of the secret.
            kept = []
        merged.append(Finding(path, line, " / ".join(kinds), ", ".join(kept)))
    return sorted(merged)


# --------------------------------------------------------------------------------------------------
# The gate


def secrets_gate(ctx: GateContext) -> GateResult:
    """No worker secret, known credential format, detect-secrets finding or suppression marker is added."""
    try:
        added, binary = added_lines(ctx.repo_path, ctx.base_sha, ctx.sha)
        findings = _merged(
            [
                *scan_added_lines(added, ctx.secret_values),
                *detect_secrets_findings(added),
                *worker_secret_findings(binary, ctx.secret_values),
            ]
        )
    except Exception as exc:
        # Fail closed, and say no more than the type: the message could quote the content being scanned.
        return GateResult(
            gate="secrets",
            passed=False,
            summary=f"secret scanner failed: {type(exc).__name__}",
            feedback=f"The secret scan could not complete ({type(exc).__name__}); the change cannot be accepted.",
        )
    count = sum(len(lines) for lines in added.values())
    skipped = f"; {len(binary)} binary file(s) skipped" if binary else ""
    report = [str(finding) for finding in findings]
    details = ctx.blobs.put_text(
        f"{count} added line(s) in {len(added)} file(s){skipped}\n"
        + "".join(f"binary, searched for worker secrets only: {path}\n" for path in binary)
        + "".join(f"{line}\n" for line in report)
    )
    if not findings:
        return GateResult(
            gate="secrets",
            passed=True,
            summary=f"no secrets in {count} added line(s) across {len(added)} file(s){skipped}",
            details_ref=details,
            notes=[f"binary files searched for worker secrets only: {', '.join(list(binary)[:10])}"] if binary else [],
        )
    listed = [f"- {line}" for line in report[:MAX_LISTED]]
    if len(report) > MAX_LISTED:
        listed.append(f"- ... and {len(report) - MAX_LISTED} more")
    feedback = (
        "Secrets or scanner-suppression markers in the added lines (values redacted). Remove them: read "
        "credentials from the environment at run time, use obvious placeholders in examples and tests, and "
        "never add suppression markers (suppression markers are not allowed in factory changes).\n" + "\n".join(listed)
    )
    return GateResult(
        gate="secrets",
        passed=False,
        summary=f"{len(findings)} finding(s) in added lines",
        feedback=feedback[:FEEDBACK_LIMIT],
        details_ref=details,
    )
