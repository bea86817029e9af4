"""The update state machine as data: phases, events, and one table (phase, event) -> next phase.

Each phase of an update is one `State` (edge_agent.ota.states) whose `run` returns an
`Event`; the runner (edge_agent.ota.installer) looks the next phase up in `TRANSITIONS`.
Failure handling is made of phases too (`rolling_back`, `aborting`), so what happens after
a failure is read here, not worked out in an exception handler. Events that end or undo a
finished update outside the runner (probation, boot fallback, `edge-agent rollback`) are
rows of the same table. Modelled on Mender's client, whose transitions, failure and
rollback states are a table, and whose persisted state carries a store counter that stops
a crash inside one phase from looping forever.

Pure data, no I/O: `protocol` (shared with the fleet) takes its phase names from here.
"""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    """Where an update job is. The values are the wire names in `reported.phase` and update.json."""

    IDLE = "idle"  # running the current model, nothing to do
    DOWNLOADING = "downloading"  # fetching the bundle into staging
    VERIFYING = "verifying"  # hash, signature, profile, schema, free space
    INSTALLING = "installing"  # unpacking into the inactive slot
    HEALTH_CHECK = "health_check"  # loading + self-test + latency budget in the inactive slot
    SHADOWING = "shadowing"  # the new model answers live frames beside the active one (deployments with a shadow gate)
    SWITCHING = "switching"  # atomic switch of the active slot, then the live model swap
    ROLLING_BACK = "rolling_back"  # failure handling: make the previous slot active again if the switch happened
    ABORTING = "aborting"  # failure handling: mark the new slot bad; the previous model stays active
    SUCCEEDED = "succeeded"  # the desired version is active
    FAILED = "failed"  # the update was abandoned; the previous model is still active
    ROLLED_BACK = "rolled_back"  # the new model was active and has been replaced by the previous one

    def __str__(self) -> str:
        return self.value

    @property
    def is_update_step(self) -> bool:
        """One of the steps that move an update forward (downloading ... switching)."""
        return self in UPDATE_STEPS

    @property
    def is_failure_handling(self) -> bool:
        return self in FAILURE_HANDLING

    @property
    def is_unfinished(self) -> bool:
        """The job still has work to do: a restart resumes it here."""
        return self in UNFINISHED

    @property
    def is_final(self) -> bool:
        return self in FINAL


class Event(str, Enum):
    """What a phase (or the agent around the runner) reports; the table decides where it leads."""

    DONE = "done"  # the phase did its work
    FAILURE = "failure"  # the phase raised; its typed error (message, kind, exit code) is recorded in the job
    CANCELLED = "cancelled"  # a newer deployment superseded the job
    STATE_LOOP = "state_loop"  # the job was stored more often than its phase allows (a crash inside a phase?)
    NOTHING_TO_UNDO = "nothing_to_undo"  # rolling back found that the new slot never became active
    ALREADY_ACTIVE = "already_active"  # the desired bundle is the one already running: nothing to install
    DAMAGED = "damaged"  # the downloaded file failed its signed check: re-check its blocks, fetch the bad ones
    LIVE_FAILURE = "live_failure"  # probation: the new model failed on live inputs; the previous one serves again
    BOOT_FALLBACK = "boot_fallback"  # the active slot failed to boot; the other good slot serves
    OPERATOR_ROLLBACK = "operator_rollback"  # `edge-agent rollback` switched to the previous slot

    def __str__(self) -> str:
        return self.value


P, E = Phase, Event

UPDATE_STEPS: tuple[Phase, ...] = (P.DOWNLOADING, P.VERIFYING, P.INSTALLING, P.HEALTH_CHECK, P.SHADOWING,
                                   P.SWITCHING)
FAILURE_HANDLING: tuple[Phase, ...] = (P.ROLLING_BACK, P.ABORTING)
UNFINISHED: tuple[Phase, ...] = UPDATE_STEPS + FAILURE_HANDLING
FINAL: tuple[Phase, ...] = (P.IDLE, P.SUCCEEDED, P.FAILED, P.ROLLED_BACK)

# Mender's limit: an update job may be stored this many times. Each phase entry stores the job, a
# normal update stores it about 7 times; a crash inside a phase stores it again on every restart.
MAX_STATE_STORES = 28
# Failure handling may still run a few times past the limit (so a state loop can mark the new slot
# bad), but a crash inside failure handling itself ends the job `failed` after these many more.
RECOVERY_STATE_STORES = 4


def store_limit(phase: Phase) -> int | None:
    """How many stores of a job a phase tolerates before STATE_LOOP (None: final phases, no limit)."""
    if phase.is_update_step:
        return MAX_STATE_STORES
    if phase.is_failure_handling:
        return MAX_STATE_STORES + RECOVERY_STATE_STORES
    return None


# The table. A missing (phase, event) pair is a programming error (InvalidTransition), never a guess.
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (P.DOWNLOADING, E.DONE): P.VERIFYING,
    (P.DOWNLOADING, E.ALREADY_ACTIVE): P.SUCCEEDED,
    (P.DOWNLOADING, E.FAILURE): P.ABORTING,
    (P.DOWNLOADING, E.CANCELLED): P.ABORTING,
    (P.DOWNLOADING, E.STATE_LOOP): P.ABORTING,
    (P.VERIFYING, E.DONE): P.INSTALLING,
    (P.VERIFYING, E.DAMAGED): P.DOWNLOADING,
    (P.VERIFYING, E.FAILURE): P.ABORTING,
    (P.VERIFYING, E.CANCELLED): P.ABORTING,
    (P.VERIFYING, E.STATE_LOOP): P.ABORTING,
    (P.INSTALLING, E.DONE): P.HEALTH_CHECK,
    (P.INSTALLING, E.DAMAGED): P.DOWNLOADING,
    (P.INSTALLING, E.FAILURE): P.ABORTING,
    (P.INSTALLING, E.CANCELLED): P.ABORTING,
    (P.INSTALLING, E.STATE_LOOP): P.ABORTING,
    (P.HEALTH_CHECK, E.DONE): P.SHADOWING,
    (P.HEALTH_CHECK, E.FAILURE): P.ABORTING,
    (P.HEALTH_CHECK, E.CANCELLED): P.ABORTING,
    (P.HEALTH_CHECK, E.STATE_LOOP): P.ABORTING,
    # no shadow gate, or a passed/skipped shadow run: switch; a failed one (ShadowFailed) keeps the old model
    (P.SHADOWING, E.DONE): P.SWITCHING,
    (P.SHADOWING, E.FAILURE): P.ABORTING,
    (P.SHADOWING, E.CANCELLED): P.ABORTING,
    (P.SHADOWING, E.STATE_LOOP): P.ABORTING,
    (P.SWITCHING, E.DONE): P.SUCCEEDED,
    (P.SWITCHING, E.FAILURE): P.ROLLING_BACK,
    (P.SWITCHING, E.CANCELLED): P.ROLLING_BACK,
    (P.SWITCHING, E.STATE_LOOP): P.ROLLING_BACK,
    (P.ROLLING_BACK, E.DONE): P.ROLLED_BACK,
    (P.ROLLING_BACK, E.NOTHING_TO_UNDO): P.ABORTING,
    (P.ROLLING_BACK, E.FAILURE): P.ABORTING,
    (P.ROLLING_BACK, E.STATE_LOOP): P.FAILED,
    (P.ABORTING, E.DONE): P.FAILED,
    (P.ABORTING, E.FAILURE): P.FAILED,
    (P.ABORTING, E.STATE_LOOP): P.FAILED,
    (P.SUCCEEDED, E.LIVE_FAILURE): P.ROLLED_BACK,
    # the active slot does not boot: the other slot serves (an unfinished job is resumed instead)
    **{(p, E.BOOT_FALLBACK): P.ROLLED_BACK for p in FINAL},
    # `edge-agent rollback` ends whatever job there was (the daemon is not running it: install lock)
    **{(p, E.OPERATOR_ROLLBACK): P.ROLLED_BACK for p in (*FINAL, *UNFINISHED)},
}


class InvalidTransition(RuntimeError):
    """An event the table has no row for in this phase: a bug, not a device condition."""


def next_phase(phase: Phase, event: Event) -> Phase:
    """The phase `event` leads to from `phase` (InvalidTransition if the table has no row)."""
    try:
        return TRANSITIONS[(Phase(phase), Event(event))]
    except KeyError:
        raise InvalidTransition(f"no transition from phase {phase} on event {event}") from None


def transition_table_markdown() -> str:
    """The table as Markdown, one row per (phase, event), in phase order."""
    order = {p: i for i, p in enumerate(Phase)}
    events = {e: i for i, e in enumerate(Event)}
    rows = sorted(TRANSITIONS.items(), key=lambda kv: (order[kv[0][0]], events[kv[0][1]]))
    lines = ["| phase | event | next phase |", "| --- | --- | --- |"]
    lines += [f"| `{p}` | `{e}` | `{n}` |" for (p, e), n in rows]
    return "\n".join(lines) + "\n"


def phase_list_markdown() -> str:
    """The phases with their kind (update step, failure handling, final) and store limit."""
    def kind(p: Phase) -> str:
        return "update step" if p.is_update_step else "failure handling" if p.is_failure_handling else "final"

    lines = ["| phase | kind | store limit |", "| --- | --- | --- |"]
    lines += [f"| `{p}` | {kind(p)} | {store_limit(p) or '-'} |" for p in Phase]
    return "\n".join(lines) + "\n"


def runner_diagram_mermaid() -> str:
    """A Mermaid state diagram of what the runner does: the rows leaving an unfinished phase, one arrow
    per (phase, next phase) labelled with its events (`edge-agent rollback` rows left out)."""
    edges: dict[tuple[Phase, Phase], list[str]] = {}
    for (p, e), n in TRANSITIONS.items():
        if p.is_unfinished and e is not Event.OPERATOR_ROLLBACK:
            edges.setdefault((p, n), []).append(e.value)
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {Phase.DOWNLOADING}"]
    lines += [f"    {p} --> {n}: {', '.join(events)}" for (p, n), events in edges.items()]
    lines += [f"    {p} --> [*]" for p in FINAL if p is not Phase.IDLE]
    return "\n".join([*lines, "```"]) + "\n"


def state_machine_markdown() -> str:
    """The generated part of docs/ota-state-machine.md (a test keeps the document equal to it)."""
    return "\n".join(["### Phases", "", phase_list_markdown(), "### What the runner does", "",
                      runner_diagram_mermaid(), "### The transition table", "", transition_table_markdown()])


if __name__ == "__main__":  # python -m edge_agent.ota.phases > the generated part of the document
    print(state_machine_markdown(), end="")
