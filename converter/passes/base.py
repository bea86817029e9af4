"""The Pass interface, the registry of passes by name, and each pass's declared options.

A pass registers itself when its class is defined (by its `name`), declares its own typed, documented
options in `default_config()` and reads their values with `self.config(ctx)`. A recipe is a list of
pass names (converter.recipes); the command line's flags for pass options come from the declarations
(converter.cli). Adding a pass with an option touches one file.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ..errors import UsageError
from ..options import PassOption
from .context import ConversionContext

PASSES: dict[str, type["Pass"]] = {}  # name -> pass class, in definition order


class Pass(ABC):
    """One step of a conversion: a name, a run() that updates the context, a report entry.

    Passes keep no state on themselves: what they hand on goes into typed context fields.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            return  # an abstract helper class, not a pass
        known = PASSES.get(cls.name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"two passes are named {cls.name!r}: {known.__module__}.{known.__qualname__} and "
                             f"{cls.__module__}.{cls.__qualname__}")
        PASSES[cls.name] = cls

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        """This pass's own options by name (typed, documented, with defaults)."""
        return {}

    @classmethod
    @functools.cache
    def config_class(cls) -> type:
        """A frozen dataclass with one field per declared option (what `config()` returns)."""
        fields = [(n, Any, dataclasses.field(default=o.default)) for n, o in cls.default_config().items()]
        return dataclasses.make_dataclass(f"{cls.__name__}Config", fields, frozen=True)

    def config(self, ctx: ConversionContext) -> Any:
        """The values of this pass's options for this conversion: the user's, else the declared defaults."""
        given = ctx.options.pass_options
        return self.config_class()(**{n: given[n] for n in self.default_config() if n in given})

    def applies(self, ctx: ConversionContext) -> bool:
        """Whether this pass has anything to do for this conversion."""
        return True

    @abstractmethod
    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        """Do the work; return the report entry (what was done, the numbers)."""


def create_pass(name: str) -> Pass:
    """A pass by its registered name."""
    try:
        return PASSES[name]()
    except KeyError:
        raise UsageError(f"no pass named {name!r} (known: {', '.join(PASSES)})") from None


def declared_options() -> dict[str, tuple[PassOption, list[str]]]:
    """Every pass option by name: its declaration and the passes that read it.

    Passes may share an option (both mixed-precision passes read --sensitivity): they then declare the
    same PassOption object, so it has one type, default and description.
    """
    found: dict[str, tuple[PassOption, list[str]]] = {}
    for pass_name, cls in PASSES.items():
        for name, option in cls.default_config().items():
            if name in found and found[name][0] != option:
                raise ValueError(f"option {name!r} is declared differently by passes {found[name][1]} and {pass_name!r}")
            found.setdefault(name, (option, []))[1].append(pass_name)
    return found


def check_pass_options(values: dict[str, Any]) -> None:
    """Refuse option names no pass declares, and values a declaration's check rejects (UsageError)."""
    known = declared_options()
    for name, value in values.items():
        if name not in known:
            raise UsageError(f"no pass has an option {name!r} (known: {', '.join(sorted(known))})")
        check = known[name][0].check
        if check is not None and value is not None:
            try:
                check(value)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
