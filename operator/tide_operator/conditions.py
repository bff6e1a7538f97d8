"""The words of a QueueConsumer's status and events: condition types, their reasons, and event reasons.

Users and alerts match on these strings (``kubectl wait --for=condition=Ready``, event field selectors);
docs/operator.md lists them. Named once here so a rename is one edit and a typo is a NameError.
"""

from __future__ import annotations

from typing import Final


class Condition:
    READY: Final = "Ready"
    REDIS_REACHABLE: Final = "RedisReachable"
    FALLBACK: Final = "Fallback"
    PAUSED: Final = "Paused"
    ACTIVE: Final = "Active"
    PODS_CREATABLE: Final = "PodsCreatable"
    SCHEDULES_VALID: Final = "SchedulesValid"
    DELETION_COSTS_SET: Final = "DeletionCostsSet"
    WAKE_ON_PUSH: Final = "WakeOnPush"


class Reason:
    """Reasons of conditions and of events (several are both)."""

    # Ready
    SERVING: Final = "Serving"
    INVALID_SPEC: Final = "InvalidSpec"
    REDIS_UNREACHABLE: Final = "RedisUnreachable"
    TARGET_NOT_FOUND: Final = "TargetNotFound"
    TARGET_NOT_SCALABLE: Final = "TargetNotScalable"
    TARGET_UNREADABLE: Final = "TargetUnreadable"
    DEPLOYMENT_FAILED: Final = "DeploymentFailed"
    DEPLOYMENT_MISSING: Final = "DeploymentMissing"
    INTERNAL_ERROR: Final = "InternalError"
    API_SERVER_ERROR: Final = "ApiServerError"
    # RedisReachable
    READ: Final = "Read"
    READ_FAILED: Final = "ReadFailed"
    REDIS_REACHABLE: Final = "RedisReachable"
    # Fallback
    FALLBACK: Final = "Fallback"
    HOLDING: Final = "Holding"
    READING: Final = "Reading"
    # Paused
    ANNOTATION: Final = "Annotation"
    NOT_PAUSED: Final = "NotPaused"
    # Active
    BACKLOG: Final = "Backlog"
    IDLE: Final = "Idle"
    # PodsCreatable
    NO_FAILURE: Final = "NoFailure"
    PODS_NOT_CREATABLE: Final = "PodsNotCreatable"
    PODS_CREATABLE: Final = "PodsCreatable"
    # SchedulesValid (an event of each too)
    INVALID_SCHEDULE: Final = "InvalidSchedule"
    SCHEDULES_VALID: Final = "SchedulesValid"
    # DeletionCostsSet (before a scale-down: idle pods first)
    COSTS_SET: Final = "CostsSet"
    PODS_NOT_PATCHABLE: Final = "PodsNotPatchable"
    # WakeOnPush (keyspace notifications end the sleep of a resource at zero; tide_operator/wake.py)
    KEYSPACE_EVENTS: Final = "KeyspaceEvents"
    WAKE_DISABLED: Final = "Disabled"
    NOTIFICATIONS_OFF: Final = "NotificationsOff"
    CONFIG_REFUSED: Final = "ConfigRefused"
    RECONNECTING: Final = "Reconnecting"
    # events only
    SCALED: Final = "Scaled"
    SCALE_FAILED: Final = "ScaleFailed"
    DEPLOYMENT_APPLIED: Final = "DeploymentApplied"
