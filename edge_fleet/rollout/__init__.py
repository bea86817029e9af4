"""Staged rollouts: plan one in the registry, then drive it step by step. No SQL here.

    stages.py    PURE arithmetic: parse NAME:VERSION, --stages, --max-failures; split into stages
    states.py    the transition tables (status, event) -> next status, as data
    observe.py   PURE decisions: from a device's report and the clock to an event
    desired.py   the DesiredState message and its download source
    plan.py      plan_rollout(): targets, stages, a pending rollout in the registry
    driver.py    RolloutDriver.step(): publishes desired states and applies events
"""

from __future__ import annotations

from .desired import desired_for, shadow_gate, source_for
from .driver import RolloutDriver
from .plan import RolloutPlan, plan_rollout, select_targets
from .stages import (DEFAULT_STAGE_TIMEOUT, DEFAULT_STAGES, failure_threshold, parse_max_failures, parse_stages,
                     parse_target, split_stages)

__all__ = ["DEFAULT_STAGES", "DEFAULT_STAGE_TIMEOUT", "RolloutDriver", "RolloutPlan", "desired_for",
           "failure_threshold", "parse_max_failures", "parse_stages", "parse_target", "plan_rollout",
           "select_targets", "shadow_gate", "source_for", "split_stages"]
