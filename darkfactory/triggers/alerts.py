"""Monitoring alerts that start a diagnosis run: Alertmanager's webhook and Sentry's issue webhooks.

An alert becomes a spec: what fired, since when, its labels, and the commits shipped recently (the likely
suspects). One alert is one run per dedupe window: Alertmanager's group key (its own grouping of alerts
with the same labels, stable across re-notifications) or the fingerprints, and Sentry's issue id (its
grouping of events by fingerprint). Resolved alerts start nothing. Routing to a repository: an alert label
`repo="owner/name"`, else a repository whose `alert_labels` all match (Sentry: `sentry_project`), else the
only repository configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from darkfactory.triggers.github_events import Ignored
from darkfactory.triggers.serve_config import RepoTriggers, ServeConfig

_INSTRUCTIONS = (
    "Find the cause of this alert in this repository and fix it, with a test that fails without the fix. "
    "If the cause is not in this code (configuration, infrastructure, a dependency's outage), change no "
    "code and explain what you found in the summary."
)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Alert(_Loose):
    status: str = "firing"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = ""
    generatorURL: str = ""
    fingerprint: str = ""


class _AlertmanagerPayload(_Loose):
    status: str
    groupKey: str = ""
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    alerts: list[_Alert] = Field(default_factory=list)


class _SentryProject(_Loose):
    slug: str = ""


class _SentryIssue(_Loose):
    id: str
    title: str = "a Sentry issue"
    culprit: str = ""
    shortId: str = ""
    level: str = ""
    firstSeen: str = ""
    permalink: str | None = None
    web_url: str | None = None
    project: _SentryProject = Field(default_factory=_SentryProject)


class _SentryData(_Loose):
    issue: _SentryIssue


class _SentryPayload(_Loose):
    action: str
    data: _SentryData


@dataclass(frozen=True)
class AlertWork:
    """An alert to diagnose: `key` is what deduplicates it (within the window)."""

    source: str
    key: str
    full_name: str
    repo: RepoTriggers
    title: str
    facts: list[str]

    def spec(self, recent_commits: list[str]) -> str:
        commits = "\n".join(f"- {line}" for line in recent_commits) or "- (none found)"
        facts = "\n".join(f"- {fact}" for fact in self.facts)
        return (
            f"# Diagnose: {self.title}\n\n{_INSTRUCTIONS}\n\n## What fired ({self.source})\n\n{facts}\n\n"
            f"## Commits shipped recently on {self.repo.base}\n\n{commits}\n"
        )


def _route(config: ServeConfig, labels: dict[str, str], sentry_project: str | None = None) -> str | None:
    if "repo" in labels and config.repo(labels["repo"]) is not None:
        return next(name for name in config.repos if name.lower() == labels["repo"].lower())
    for name, repo in config.repos.items():
        if repo.alert_labels and all(labels.get(k) == v for k, v in repo.alert_labels.items()):
            return name
        if sentry_project and repo.sentry_project == sentry_project:
            return name
    if len(config.repos) == 1:
        return next(iter(config.repos))
    return None


def alertmanager_work(payload: dict[str, Any], config: ServeConfig) -> AlertWork | Ignored:
    try:
        parsed = _AlertmanagerPayload.model_validate(payload)
    except ValidationError as exc:
        return Ignored(f"not an Alertmanager webhook payload ({exc.error_count()} problems)")
    firing = [alert for alert in parsed.alerts if alert.status == "firing"]
    if parsed.status != "firing" or not firing:
        return Ignored("the alert is resolved")
    labels = parsed.commonLabels or firing[0].labels
    full_name = _route(config, labels)
    if full_name is None:
        return Ignored(f"no repository in the serve config matches the alert's labels {sorted(labels.items())}")
    key = parsed.groupKey or ",".join(sorted(alert.fingerprint for alert in firing))
    annotations = parsed.commonAnnotations or firing[0].annotations
    facts = [f"alert {labels.get('alertname', '(unnamed)')}: {len(firing)} firing"]
    facts += [f"{name}: {text}" for name, text in sorted(annotations.items())]
    facts.append("since " + ", ".join(sorted({alert.startsAt for alert in firing if alert.startsAt})))
    facts.append("labels: " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
    facts += sorted({f"source: {alert.generatorURL}" for alert in firing if alert.generatorURL})
    title = annotations.get("summary") or labels.get("alertname", "an alert")
    return AlertWork("alertmanager", key, full_name, config.repos[full_name], title, facts)


def sentry_work(resource: str | None, payload: dict[str, Any], config: ServeConfig) -> AlertWork | Ignored:
    if resource not in (None, "issue"):
        return Ignored(f"Sentry resource {resource!r} is not handled (only issue)")
    try:
        parsed = _SentryPayload.model_validate(payload)
    except ValidationError as exc:
        return Ignored(f"not a Sentry issue webhook payload ({exc.error_count()} problems)")
    if parsed.action not in ("created", "unresolved"):
        return Ignored(f"Sentry issue {parsed.action}: only a new or regressed issue starts a run")
    issue = parsed.data.issue
    full_name = _route(config, {}, issue.project.slug)
    if full_name is None:
        return Ignored(f"no repository in the serve config has sentry_project = {issue.project.slug!r}")
    facts = [f"Sentry issue {issue.shortId or issue.id} ({issue.level or 'error'}): {issue.title}"]
    facts += [f"where: {issue.culprit}"] if issue.culprit else []
    facts += [f"since {issue.firstSeen}"] if issue.firstSeen else []
    facts += [f"project: {issue.project.slug}"] if issue.project.slug else []
    link = issue.web_url or issue.permalink
    facts += [f"source: {link}"] if link else []
    return AlertWork("sentry", issue.id, full_name, config.repos[full_name], issue.title, facts)
