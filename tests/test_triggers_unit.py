"""The pure parts of the triggers: signatures, which events ask for a run, alert specs, the serve config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from darkfactory.contracts import RunRequest
from darkfactory.triggers.alerts import AlertWork, alertmanager_work, sentry_work
from darkfactory.triggers.github_events import Ignored, IssueWork, issue_work
from darkfactory.triggers.ids import alert_run_id, issue_run_id
from darkfactory.triggers.serve_config import ServeConfigError, parse_serve_config
from darkfactory.triggers.signatures import (
    bearer_valid,
    github_signature_valid,
    hmac_sha256_hex,
    sentry_signature_valid,
)

CONFIG = parse_serve_config(
    """
[repos."acme/widgets"]
path = "/srv/widgets"
label = "factory"
alert_labels = { service = "widgets" }
sentry_project = "widgets-web"

[repos."acme/gears"]
path = "/srv/gears"
label = "robot"
""",
    "serve.toml",
)


def labelled(label: str = "factory", repo: str = "acme/widgets", **issue: Any) -> dict[str, Any]:
    return {
        "action": "labeled",
        "label": {"name": label},
        "issue": {"number": 7, "title": "Add slugify", "body": "Make `slugify` work.", **issue},
        "repository": {"full_name": repo},
        "sender": {"login": "alice"},
    }


def commented(body: str, association: str) -> dict[str, Any]:
    return {
        "action": "created",
        "issue": {"number": 7, "title": "Add slugify", "body": "b"},
        "comment": {"body": body, "author_association": association, "user": {"login": "mallory"}},
        "repository": {"full_name": "acme/widgets"},
    }


def test_the_github_signature_matches_githubs_documented_test_vector() -> None:
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert github_signature_valid(secret, body, expected)
    assert not github_signature_valid(secret, body + b" ", expected)
    assert not github_signature_valid("another secret", body, expected)
    assert not github_signature_valid(secret, body, expected.removeprefix("sha256="))  # the prefix is required
    assert not github_signature_valid(secret, body, None)
    assert not github_signature_valid(secret, body, "sha1=" + expected.removeprefix("sha256="))


def test_sentry_signature_and_bearer_token() -> None:
    body = b'{"action": "created"}'
    assert sentry_signature_valid("client-secret", body, hmac_sha256_hex("client-secret", body))
    assert not sentry_signature_valid("client-secret", body, hmac_sha256_hex("other", body))
    assert not sentry_signature_valid("client-secret", body, "")
    assert bearer_valid("tok-123", "Bearer tok-123")
    assert not bearer_valid("tok-123", "Bearer tok-1234")
    assert not bearer_valid("tok-123", "tok-123")
    assert not bearer_valid("tok-123", None)


def test_only_the_configured_label_on_an_open_issue_of_a_configured_repository_asks_for_a_run() -> None:
    work = issue_work("issues", labelled(), CONFIG)
    assert isinstance(work, IssueWork)
    assert (work.full_name, work.issue.number, work.asked_by) == ("acme/widgets", 7, "alice")
    assert work.spec.startswith("# Add slugify\n\nMake `slugify` work.")
    assert "acme/widgets#7" in work.spec
    assert isinstance(issue_work("issues", labelled("robot", "acme/gears"), CONFIG), IssueWork)  # its own label

    ignored = {
        "other label": issue_work("issues", labelled("bug"), CONFIG),
        "other repo": issue_work("issues", labelled(repo="acme/unknown"), CONFIG),
        "closed": issue_work("issues", labelled(state="closed"), CONFIG),
        "pull request": issue_work("issues", labelled(pull_request={"url": "u"}), CONFIG),
        "unlabeled": issue_work("issues", {**labelled(), "action": "unlabeled"}, CONFIG),
        "push": issue_work("push", {"ref": "refs/heads/main"}, CONFIG),
        "ping": issue_work("ping", {"zen": "Keep it logically awesome."}, CONFIG),
        "not an issue": issue_work("issues", {"action": "labeled", "issue": "seven"}, CONFIG),
    }
    assert all(isinstance(result, Ignored) for result in ignored.values()), ignored
    assert "not in the serve config" in ignored["other repo"].reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "association", "runs"),
    [
        ("/factory run", "OWNER", True),
        ("/factory run please\nthanks", "MEMBER", True),
        ("  /factory run  ", "COLLABORATOR", True),
        ("/factory run", "CONTRIBUTOR", False),
        ("/factory run", "NONE", False),
        ("/factory running late", "OWNER", False),
        ("please /factory run", "OWNER", False),
        ("", "OWNER", False),
    ],
)
def test_a_comment_asks_for_a_run_only_from_owners_members_and_collaborators(
    body: str, association: str, runs: bool
) -> None:
    assert isinstance(issue_work("issue_comment", commented(body, association), CONFIG), IssueWork) is runs


def firing(status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "version": "4",
        "status": status,
        "groupKey": '{}:{alertname="HighErrorRate"}',
        "commonLabels": {"alertname": "HighErrorRate", "severity": "page", **labels},
        "commonAnnotations": {"summary": "5xx above 5% on /api/slug"},
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "HighErrorRate"},
                "startsAt": "2026-12-03T04:00:00Z",
                "fingerprint": "c0ffee",
                "generatorURL": "http://prometheus/graph",
            }
        ],
    }


def test_an_alert_is_routed_by_its_labels_and_becomes_a_diagnosis_spec() -> None:
    work = alertmanager_work(firing(service="widgets"), CONFIG)
    assert isinstance(work, AlertWork)
    assert (work.source, work.full_name, work.key) == ("alertmanager", "acme/widgets", '{}:{alertname="HighErrorRate"}')
    spec = work.spec(["abc1234 2026-12-02T10:00:00+00:00 bob: Speed up slugify"])
    assert spec.startswith("# Diagnose: 5xx above 5% on /api/slug")
    for fact in ("since 2026-12-03T04:00:00Z", "severity=page", "abc1234", "Speed up slugify", "http://prometheus"):
        assert fact in spec
    by_repo_label = alertmanager_work(firing(repo="acme/gears"), CONFIG)
    assert isinstance(by_repo_label, AlertWork) and by_repo_label.full_name == "acme/gears"
    assert isinstance(alertmanager_work(firing(), CONFIG), Ignored)  # two repos, no label matches either
    assert isinstance(alertmanager_work(firing("resolved", service="widgets"), CONFIG), Ignored)
    assert isinstance(alertmanager_work({"alerts": "nope"}, CONFIG), Ignored)


def test_a_sentry_issue_routes_by_project_and_only_new_or_regressed_issues_start_runs() -> None:
    def payload(action: str, slug: str = "widgets-web") -> dict[str, Any]:
        issue = {"id": "4711", "title": "KeyError: 'slug'", "culprit": "app.views", "project": {"slug": slug}}
        return {"action": action, "data": {"issue": issue}}

    work = sentry_work("issue", payload("created"), CONFIG)
    assert isinstance(work, AlertWork) and (work.full_name, work.key) == ("acme/widgets", "4711")
    assert "where: app.views" in work.spec([])
    assert isinstance(sentry_work("issue", payload("unresolved"), CONFIG), AlertWork)
    assert isinstance(sentry_work("issue", payload("resolved"), CONFIG), Ignored)
    assert isinstance(sentry_work("issue", payload("created", "other"), CONFIG), Ignored)
    assert isinstance(sentry_work("installation", payload("created"), CONFIG), Ignored)


def test_run_ids_name_one_run_per_issue_and_per_alert_window() -> None:
    assert issue_run_id("acme/widgets", 7) == issue_run_id("Acme/Widgets", 7)  # GitHub names ignore case
    assert issue_run_id("acme/widgets", 7).startswith("issue-acme-widgets-")
    assert issue_run_id("acme/widgets", 7) != issue_run_id("acme/widgets", 8)
    assert issue_run_id("acme-x/y", 7) != issue_run_id("acme/x-y", 7)  # one slug, two repositories
    long_name = "acme/" + "a-very-long-repository-name-" * 3
    assert issue_run_id(long_name + "one", 7) != issue_run_id(long_name + "two", 7)
    assert issue_run_id(long_name, 12345678).endswith("-12345678") and len(issue_run_id(long_name, 12345678)) <= 64
    RunRequest.model_validate(  # a valid run id, for the longest names GitHub allows
        {"run_id": issue_run_id("o" * 39 + "/" + "r" * 100, 10**9), "repo_path": "/r", "spec": "s",
         "config": {"model": "m"}}
    )  # fmt: skip
    assert alert_run_id("alertmanager", "k", 5) == alert_run_id("alertmanager", "k", 5)
    assert alert_run_id("alertmanager", "k", 5) != alert_run_id("alertmanager", "k", 6)
    assert alert_run_id("alertmanager", "k", 5) != alert_run_id("alertmanager", "other", 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[repos."acme/widgets"]\npath = "/x"\nship = "yolo"',
            'serve.toml: repos."acme/widgets".ship: Input should be',
        ),
        ('[repos."acme/widgets"]\npath = "/x"\nlabl = "factory"', 'repos."acme/widgets".labl: Extra inputs'),
        ('[repos."acme/widgets"]\nlabel = "factory"', 'repos."acme/widgets".path: Field required'),
        ('[repos."not a name"]\npath = "/x"', 'repos."not a name" is not a GitHub full name'),
        ('[server]\nport = 99999\n[repos."a/b"]\npath = "/x"', "server.port: Input should be less than"),
        ("[server]\nport = 8000", "repos: Field required"),
        ("[repos", "serve.toml is not valid TOML"),
    ],
)
def test_a_bad_config_is_refused_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ServeConfigError) as error:
        parse_serve_config(text, "serve.toml")
    assert message in str(error.value)


def test_a_missing_config_says_what_to_write(tmp_path: Path) -> None:
    from darkfactory.triggers.serve_config import load_serve_config

    with pytest.raises(ServeConfigError, match=r"no serve config at .*serve.toml; write one"):
        load_serve_config(tmp_path / "serve.toml")
