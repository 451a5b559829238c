"""Pydantic models that cross every boundary: activity inputs and results, workflow state, queries.

They travel through Temporal's pydantic data converter, so they must stay small (ids, shas, blob refs,
short summaries) and must not build clocks or random values in defaults: workflows construct some of them.
One input model per activity keeps fields addable without breaking recorded histories.

One module per boundary, all re-exported here: `from darkfactory.contracts import X`.
"""

from __future__ import annotations

from darkfactory.contracts.acceptance import (
    AcceptanceCheck,
    AcceptanceInput,
    AcceptanceSuite,
    AcceptanceTestFile,
    AcceptanceTests,
    CheckAcceptanceInput,
)
from darkfactory.contracts.agent import (
    AgentTurnInput,
    AgentTurnResult,
    AttemptBrief,
    RunToolsInput,
    RunToolsResult,
)
from darkfactory.contracts.base import (
    RUN_ID_PATTERN,
    TASK_ID_PATTERN,
    BlobRef,
    Frozen,
)
from darkfactory.contracts.config import (
    IssueRef,
    RunConfig,
    RunRequest,
    ShipMode,
    Timeouts,
    Trigger,
    slugify_run_id,
)
from darkfactory.contracts.gates import (
    BaseFailure,
    BaselineSummary,
    GatePurpose,
    GateReport,
    GateResult,
    MeasureBaseInput,
    RunGatesInput,
)
from darkfactory.contracts.git import (
    MergeResult,
    MergeTaskInput,
    OpenWorkspaceInput,
    PreparedRun,
    PrepareRunInput,
    RestoreBranchInput,
    RevertShippedInput,
    ShipInput,
    ShipResult,
    WorkspaceRef,
)
from darkfactory.contracts.messages import (
    CallContext,
    CallPurpose,
    ModelRequest,
    ModelResponse,
    ToolCall,
    ToolOutcome,
    Usage,
)
from darkfactory.contracts.people import (
    Decision,
    DecisionAction,
    DecisionInput,
    EscalationState,
    ReviewFinding,
    ReviewInput,
    ReviewResult,
    ReviewVerdict,
)
from darkfactory.contracts.plans import (
    Plan,
    PlanInput,
    PlannedTask,
    PlanResult,
)
from darkfactory.contracts.runs import (
    RunPhase,
    RunState,
    RunSummary,
)
from darkfactory.contracts.tasks import (
    AttemptRecord,
    TaskEscalation,
    TaskInput,
    TaskOutcome,
    TaskResult,
    TaskState,
    TaskSummary,
    TerminalState,
)
from darkfactory.contracts.triggers import IssueCommentInput, IssueCommentResult

__all__ = [
    "RUN_ID_PATTERN",
    "TASK_ID_PATTERN",
    "AcceptanceCheck",
    "AcceptanceInput",
    "AcceptanceSuite",
    "AcceptanceTestFile",
    "AcceptanceTests",
    "AgentTurnInput",
    "AgentTurnResult",
    "AttemptBrief",
    "AttemptRecord",
    "BaseFailure",
    "BaselineSummary",
    "BlobRef",
    "CallContext",
    "CallPurpose",
    "CheckAcceptanceInput",
    "Decision",
    "DecisionAction",
    "DecisionInput",
    "EscalationState",
    "Frozen",
    "GatePurpose",
    "GateReport",
    "GateResult",
    "IssueCommentInput",
    "IssueCommentResult",
    "IssueRef",
    "MeasureBaseInput",
    "MergeResult",
    "MergeTaskInput",
    "ModelRequest",
    "ModelResponse",
    "OpenWorkspaceInput",
    "Plan",
    "PlanInput",
    "PlanResult",
    "PlannedTask",
    "PrepareRunInput",
    "PreparedRun",
    "RestoreBranchInput",
    "RevertShippedInput",
    "ReviewFinding",
    "ReviewInput",
    "ReviewResult",
    "ReviewVerdict",
    "RunConfig",
    "RunGatesInput",
    "RunPhase",
    "RunRequest",
    "RunState",
    "RunSummary",
    "RunToolsInput",
    "RunToolsResult",
    "ShipInput",
    "ShipMode",
    "ShipResult",
    "TaskEscalation",
    "TaskInput",
    "TaskOutcome",
    "TaskResult",
    "TaskState",
    "TaskSummary",
    "TerminalState",
    "Timeouts",
    "ToolCall",
    "ToolOutcome",
    "Trigger",
    "Usage",
    "WorkspaceRef",
    "slugify_run_id",
]
