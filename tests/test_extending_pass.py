"""docs/extending.md's worked example, kept honest: a pass defined here registers itself by name, its
option becomes an `edge-convert convert` flag, and a recipe that names it runs it in a real conversion."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

from converter.errors import BundleTooLarge
from converter.options import PassOption
from converter.passes import ConversionContext, Pass

from .conftest import REPO, convert_args


class ModelSizePass(Pass):
    """Record the converted model's size; refuse a model over --max-model-kb."""

    name = "model-size"

    @classmethod
    def default_config(cls) -> dict[str, PassOption]:
        return {"max_model_kb": PassOption(float, None, "refuse a converted model larger than this many kB "
                                                        "(default: no limit)")}

    def applies(self, ctx: ConversionContext) -> bool:
        return ctx.model is not None

    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        limit = self.config(ctx).max_model_kb
        kb = round(ctx.model.stat().st_size / 1024, 1)
        ctx.measurements["model_size"] = {"kb": kb, "limit_kb": limit}
        if limit is not None and kb > limit:
            raise BundleTooLarge(f"{ctx.precision} model is {kb} kB, over --max-model-kb {limit}")
        return {"kb": kb}


@pytest.fixture
def recipe_with_model_size(monkeypatch):
    """The ONNX recipe with the new pass after the accuracy gate (the one line docs/extending.md adds)."""
    from converter.recipes import RECIPES

    onnx = RECIPES["onnx"]
    at = onnx.index("accuracy-gate") + 1
    monkeypatch.setitem(RECIPES, "onnx", (*onnx[:at], "model-size", *onnx[at:]))


def test_the_documented_pass_is_this_one():
    doc = (REPO / "docs" / "extending.md").read_text()
    block = re.search(r"```python\n(class ModelSizePass.*?)```", doc, re.S).group(1)
    assert block.strip() == inspect.getsource(ModelSizePass).strip()


def test_a_new_pass_registers_its_option_and_runs_in_a_recipe(recipe_with_model_size, digits, tmp_path, capsys):
    from converter.cli import main
    from converter.passes import PASSES, declared_options

    assert PASSES["model-size"] is ModelSizePass
    assert declared_options()["max_model_kb"][1] == ["model-size"]
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    assert "--max-model-kb" in capsys.readouterr().out  # the flag comes from the declaration

    out = tmp_path / "sized.edgebundle"
    assert main(convert_args(digits, out, "raspberry-pi-4", "--max-model-kb", "1000")) == 0
    report = json.loads(Path(str(out) + ".report.json").read_text())
    names = [p["pass"] for p in report["passes"]]
    assert names.index("accuracy-gate") < names.index("model-size") < names.index("package")
    assert report["measurements"]["model_size"]["limit_kb"] == 1000 and report["measurements"]["model_size"]["kb"] > 0

    small = tmp_path / "refused.edgebundle"
    assert main(convert_args(digits, small, "raspberry-pi-4", "--max-model-kb", "0.1")) == BundleTooLarge.exit_code
    assert "over --max-model-kb 0.1" in capsys.readouterr().err and not small.exists()
