"""Which status follows which: the rollout's transitions written as data (state, event) -> next.

As in Mender's update client, the table is the single place that says what may happen; the
driver only observes devices, names the event, and looks the next status up here. A pair
missing from the table is a bug and raises IllegalTransition instead of writing a status
that no reader expects. Statuses themselves are registry vocabulary (registry/records.py).
"""

from __future__ import annotations

from enum import StrEnum

from ..registry.records import RolloutStatus as R
from ..registry.records import TargetStatus as T


class TargetEvent(StrEnum):
    """What happened to one device of a rollout."""

    SENT = "sent"  # its stage started: desired state published
    ALREADY_CURRENT = "already_current"  # its stage started and it already runs the bundle
    BUNDLE_MISSING = "bundle_missing"  # its stage started but the bundle left the registry
    REPORTED_SUCCESS = "reported_success"
    REPORTED_FAILURE = "reported_failure"
    TIMED_OUT = "timed_out"
    UNDONE = "undone"  # succeeded, then its agent rolled back (probation)
    HALT_NOT_STARTED = "halt_not_started"
    HALT_CANCELLED = "halt_cancelled"  # update in flight: desired state reset
    HALT_REVERT_SENT = "halt_revert_sent"  # switched: previous bundle sent, await its report
    HALT_REVERT_DONE = "halt_revert_done"  # switched from nothing: desired state cleared, nothing to await
    HALT_REVERT_IMPOSSIBLE = "halt_revert_impossible"  # switched, but the previous bundle is gone
    HALT_NOTED = "halt_noted"  # already failed: only the reason gains a note
    ROLLBACK_CONFIRMED = "rollback_confirmed"
    ROLLBACK_REPORTED_FAILURE = "rollback_reported_failure"


class RolloutEvent(StrEnum):
    """What happened to a rollout as a whole."""

    STARTED = "started"
    NEXT_STAGE = "next_stage"
    COMPLETED = "completed"
    HALTED_AWAIT_ROLLBACKS = "halted_await_rollbacks"
    HALTED = "halted"
    ROLLBACKS_SETTLED = "rollbacks_settled"
    OPERATOR_HALT = "operator_halt"  # an operator paused it: no new stage starts
    OPERATOR_RESUME = "operator_resume"


E = TargetEvent
TARGET_TRANSITIONS: dict[tuple[T, TargetEvent], T] = {
    (T.WAITING, E.SENT): T.SENT,
    (T.WAITING, E.ALREADY_CURRENT): T.SUCCEEDED,
    (T.WAITING, E.BUNDLE_MISSING): T.FAILED,
    (T.WAITING, E.HALT_NOT_STARTED): T.NOT_STARTED,
    (T.SENT, E.REPORTED_SUCCESS): T.SUCCEEDED,
    (T.SENT, E.REPORTED_FAILURE): T.FAILED,
    (T.SENT, E.TIMED_OUT): T.TIMEOUT,
    (T.SENT, E.HALT_CANCELLED): T.CANCELLED,
    (T.SUCCEEDED, E.UNDONE): T.FAILED,
    (T.SUCCEEDED, E.HALT_REVERT_SENT): T.ROLLING_BACK,
    (T.SUCCEEDED, E.HALT_REVERT_DONE): T.ROLLED_BACK,
    (T.SUCCEEDED, E.HALT_REVERT_IMPOSSIBLE): T.ROLLBACK_FAILED,
    (T.FAILED, E.HALT_NOTED): T.FAILED,
    (T.TIMEOUT, E.HALT_NOTED): T.TIMEOUT,
    (T.ROLLING_BACK, E.ROLLBACK_CONFIRMED): T.ROLLED_BACK,
    (T.ROLLING_BACK, E.ROLLBACK_REPORTED_FAILURE): T.ROLLBACK_FAILED,
    (T.ROLLING_BACK, E.TIMED_OUT): T.ROLLBACK_TIMEOUT,
}

RE = RolloutEvent
ROLLOUT_TRANSITIONS: dict[tuple[R, RolloutEvent], R] = {
    (R.PENDING, RE.STARTED): R.RUNNING,
    (R.RUNNING, RE.NEXT_STAGE): R.RUNNING,
    (R.RUNNING, RE.COMPLETED): R.SUCCEEDED,
    (R.RUNNING, RE.HALTED_AWAIT_ROLLBACKS): R.HALTING,
    (R.RUNNING, RE.HALTED): R.HALTED,
    (R.HALTING, RE.ROLLBACKS_SETTLED): R.HALTED,
    (R.RUNNING, RE.OPERATOR_HALT): R.PAUSED,
    (R.PAUSED, RE.OPERATOR_RESUME): R.RUNNING,
    # halted or rolled back before its first stage was sent: paused before stage 1, or halted with nothing sent
    (R.PENDING, RE.OPERATOR_HALT): R.PAUSED,
    (R.PENDING, RE.HALTED): R.HALTED,
    # a paused rollout still watches its in-flight devices: too many failures halt it as usual
    (R.PAUSED, RE.HALTED_AWAIT_ROLLBACKS): R.HALTING,
    (R.PAUSED, RE.HALTED): R.HALTED,
    # an operator's roll-back of a finished rollout: its switched devices go back to their previous bundle
    (R.SUCCEEDED, RE.HALTED_AWAIT_ROLLBACKS): R.HALTING,
    (R.SUCCEEDED, RE.HALTED): R.HALTED,
}


class Action(StrEnum):
    """What an operator may ask of a rollout (API, console, `edge-fleet halt|resume|rollback`)."""

    HALT = "halt"  # pause: no new stage starts; devices already sent the update finish
    RESUME = "resume"
    ROLLBACK = "rollback"  # halt now and send every switched device its previous bundle


# The rollout event each action is, in ROLLOUT_TRANSITIONS (a rollback always may end HALTED; with switched
# devices it passes through HALTING first). The table is the one source of what an action may do.
ACTION_EVENT: dict[Action, RolloutEvent] = {
    Action.HALT: RE.OPERATOR_HALT,
    Action.RESUME: RE.OPERATOR_RESUME,
    Action.ROLLBACK: RE.HALTED,
}
# The statuses from which each action may be requested, read off the table. A request on a pending rollout is
# applied before its first stage starts: halted, it waits paused before stage 1; rolled back, it ends with nothing sent.
ACTION_FROM: dict[Action, frozenset[R]] = {
    action: frozenset(status for status, ev in ROLLOUT_TRANSITIONS if ev == event)
    for action, event in ACTION_EVENT.items()
}



def allowed_from(action: Action) -> str:
    """The statuses `action` may be requested from, for a refusal's one line."""
    return ", ".join(sorted(ACTION_FROM[action]))


# A stage is finished when each of its devices is in one of these (a SUCCEEDED one may still turn FAILED).
STAGE_FINISHED = frozenset({T.SUCCEEDED, T.FAILED, T.TIMEOUT, T.SKIPPED, T.ROLLED_BACK, T.ROLLBACK_FAILED,
                            T.ROLLBACK_TIMEOUT, T.CANCELLED, T.NOT_STARTED})
# What counts against --max-failures.
COUNTS_AS_FAILURE = frozenset({T.FAILED, T.TIMEOUT})


class IllegalTransition(RuntimeError):
    """The driver asked for a (status, event) pair that the table does not have: a bug, not a user error."""


def next_target_status(status: T, event: TargetEvent) -> T:
    try:
        return TARGET_TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(f"rollout target: no transition from {status} on {event}") from None


def next_rollout_status(status: R, event: RolloutEvent) -> R:
    try:
        return ROLLOUT_TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(f"rollout: no transition from {status} on {event}") from None
