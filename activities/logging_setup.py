"""The Temporal SDK's workflow and activity loggers, made to write JSON-friendly lines.

By default they append their context to the message text (`waiting for a person: ... ({'attempt': 1, ...})`),
which a log search cannot filter on. They also put the same context on the record (`temporal_workflow`,
`temporal_activity`), which `darkfactory.telemetry.add_sdk_context` turns into fields; so the message stays
plain. The settings are the SDK's module-level loggers': process-wide, set by the composition root.
"""

from __future__ import annotations

from temporalio import activity, workflow


def sdk_context_as_fields() -> None:
    """Keep the SDK loggers' context out of their messages (it is still on each record, for the fields)."""
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
