"""argparse value types shared by every edgekit CLI (the converter imports them from here: the agent runs on
devices without the converter)."""

from __future__ import annotations

import argparse
from typing import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum, with a one-line error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def port_number(text: str) -> int:
    """argparse type: a TCP port 0-65535 (0: any free port); a port out of range otherwise reached bind() and
    ended the run with exit 1 and socket's own text."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def seconds(positive: bool = False, unit: str = "seconds") -> Callable[[str], float]:
    """argparse type: a finite duration in seconds, >= 0 (0 = off) or, with positive, > 0; nan, inf and negative
    values used to pass argparse's float and meant a loop that never waits, never ends, or never times out."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if not (value > 0 if positive else value >= 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {'more than 0' if positive else '>= 0 (0 = off)'} {unit}, "
                                             f"got {text}")
        return value

    return parse
