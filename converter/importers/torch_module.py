"""PyTorch importer: `file.py:factory`, TorchScript (.pt) or exported program (.pt2) -> ONNX.

Export uses `torch.onnx.export(..., dynamo=True)` and inlines the weights (external_data=False)
so the bundle holds one self-contained model file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from pathlib import Path

from ..errors import ImportFailed
from .base import ImportedModel

log = logging.getLogger(__name__)
DEFAULT_OPSET = 20


def _load_factory(spec: str):
    import torch

    file_part, func = spec.rsplit(":", 1)
    path = Path(file_part)
    if not path.is_file():
        raise ImportFailed(f"model file {path} does not exist")
    mod_name = f"_edgekit_user_model_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    folder = str(path.resolve().parent)  # its sibling modules import as under `python model.py` (`from layers import`
    sys.path.insert(0, folder)  # failed with "No module named 'layers'")
    try:
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise ImportFailed(f"importing {path} failed: {exc.__class__.__name__}: {exc}") from exc
        factory = getattr(module, func, None)
        if factory is None or not callable(factory):
            raise ImportFailed(f"{path} has no callable {func!r}")
        try:
            model = factory()
        except Exception as exc:  # the user's code: its failure is an import failure (21), named, not exit 1
            raise ImportFailed(f"{spec}: {func}() raised {exc.__class__.__name__}: {exc}") from exc
    finally:
        sys.path.remove(folder)
    if not isinstance(model, torch.nn.Module):
        raise ImportFailed(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _forward_inputs(model) -> list[str]:
    """The names of the positional tensors forward() takes (one unnamed input when they cannot be read)."""
    import inspect

    schema = getattr(getattr(model, "forward", None), "schema", None)  # TorchScript: no Python signature
    if schema is not None:
        names = [a.name for a in schema.arguments[1:] if not a.has_default_value()]  # `mask=None`: default None
        return names or ["input"]
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return ["input"]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return names or ["input"]


def _takes(model, example) -> bool:
    """Whether the model runs on `example`: float32 first (uint8 pixels feed a Conv2d as floats), the data's integer
    dtype only when floats fail (token ids: an Embedding refuses them)."""
    import torch

    try:
        with torch.no_grad():
            model(example)
    except Exception:  # the user's model: any failure means 'not this dtype'
        return False
    return True


def _npz_arrays(data: list[Path] | None) -> dict:
    """Arrays of the first .npz (or .npy) among the calibration/eval files (empty without one)."""
    import numpy as np

    from ..data.npz import READ_ERRORS

    for path in data or []:
        if path.suffix == ".npy" and path.is_file():  # a single-input model's samples
            try:
                return {"input": np.load(path, allow_pickle=False)[:1]}
            except (*READ_ERRORS, IndexError):
                return {}
        if path.suffix == ".npz" and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as npz:
                    return {k: npz[k][:1] for k in npz.files}
            except READ_ERRORS:  # the data loader says what is wrong with the file
                return {}
    return {}


def export_examples(model, source: str, input_shape: list[int] | None, data: list[Path] | None):
    """(names, example tensors) for torch.onnx.export. One input: --input-shape, float32 unless the data is integer
    and the model refuses floats (token ids: an Embedding). Several inputs: each from the .npz array named after the
    forward() argument, its first sample (there is one --input-shape)."""
    import numpy as np
    import torch

    if isinstance(input_shape, dict):  # NAME=SHAPE: the one shape of a forward(NAME)
        if len(input_shape) != 1:
            raise ImportFailed(f"{source}: a PyTorch source takes one --input-shape; a forward() with several inputs "
                               "takes its examples from the .npz")
        input_shape = next(iter(input_shape.values()))
    names, arrays = _forward_inputs(model), _npz_arrays(data)
    if "labels" not in names:  # class labels, not an input (an argument named `labels` is fed: data/npz.py)
        arrays.pop("labels", None)
    if len(names) == 1:
        if not input_shape:
            raise ImportFailed("PyTorch sources need --input-shape, e.g. --input-shape 1x3x224x224")
        array = arrays.get(names[0], next(iter(arrays.values())) if len(arrays) == 1 else None)
        example = torch.zeros(*input_shape)
        if array is not None and array.dtype.kind in "iub" and not _takes(model, example):
            example = example.to(torch.from_numpy(np.zeros(1, array.dtype)).dtype)  # token ids: an Embedding
        return ["input"], (example,)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ImportFailed(f"{source}: forward() takes {len(names)} inputs ({', '.join(names)}): give --calibration "
                           f"or --eval as an .npz with one array per input, named {', '.join(names)} (missing: "
                           f"{', '.join(missing)}); their first sample is the export example")
    return names, tuple(torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in names)


def import_torch(source: str, kind: str, workdir: Path, input_shape: list[int] | None, opset: int | None,
                 data: list[Path] | None = None) -> ImportedModel:
    import torch

    if kind == "torch-factory":
        model = _load_factory(source)
        digest = hashlib.sha256(Path(source.rsplit(":", 1)[0]).read_bytes()).hexdigest()
    elif kind == "torchscript":
        if _is_torch_save_checkpoint(Path(source)):
            raise ImportFailed(f"{source} is a torch.save() checkpoint (a state_dict or a pickled module), not "
                               "TorchScript: give file.py:factory, a function that builds the model and loads these "
                               "weights, or save the model with torch.jit.script(model).save(PATH)")
        try:
            model = torch.jit.load(source, map_location="cpu")
        except Exception as exc:
            raise ImportFailed(f"{source} is not a loadable TorchScript file: {exc}") from exc
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    else:
        try:
            model = torch.export.load(source).module()
        except Exception as exc:
            raise ImportFailed(f"{source} is not a loadable exported program (.pt2): {exc}") from exc
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    if hasattr(model, "eval"):
        try:
            model.eval()
        except NotImplementedError:  # an exported program's module (.pt2): traced as it was, eval() not supported
            pass
    names, example = export_examples(model, source, input_shape, data)
    output_names = _output_names(_run_example(model, source, example))
    out = workdir / "float.onnx"
    # TorchScript modules cannot go through torch.export: they use the TorchScript exporter.
    # For the others, dynamo first; the TorchScript exporter is the fallback for graphs it rejects.
    attempts = [False] if kind == "torchscript" else [True, False]
    errors = []
    for dynamo in attempts:
        log.info("exporting %s to ONNX (%s exporter, opset %s)", source, "dynamo" if dynamo else "TorchScript", opset or DEFAULT_OPSET)
        try:
            with torch.no_grad():
                kwargs = {"external_data": False} if dynamo else {}
                torch.onnx.export(model, example, str(out), dynamo=dynamo, opset_version=opset or DEFAULT_OPSET,
                                  input_names=names, output_names=output_names, verbose=False, **kwargs)
            break
        except Exception as exc:
            errors.append(_first_line(exc))
            log.warning("%s export failed: %s", "dynamo" if dynamo else "TorchScript", errors[-1])
    else:
        raise ImportFailed(f"torch.onnx.export failed for {source}: {' / '.join(errors)}")
    return ImportedModel(
        onnx_path=out, source_format=kind, source_sha256=digest, opset=opset or DEFAULT_OPSET,
        details={"torch": torch.__version__, "input_shape": [list(t.shape) for t in example] if len(example) > 1
                 else list(example[0].shape)},
    )


def _run_example(model, source: str, example: tuple):
    """forward() on the export example, before exporting: a wrong --input-shape failed both exporters, and the line
    began with torch.export's 'Failed to export the model with torch.export. This is step 1/3 ... Next steps:'."""
    import torch

    try:
        with torch.no_grad():
            return model(*example)
    except Exception as exc:  # the user's model: its own failure, named with the shapes it was given
        given = ", ".join(f"{'x'.join(map(str, t.shape))} {str(t.dtype).replace('torch.', '')}" for t in example)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if "TorchScript interpreter" in _first_line(exc) and lines else _first_line(exc)
        raise ImportFailed(f"{source}: forward() fails on the export example ({given}): {reason[:300]}; check "
                           "--input-shape (or the shapes of the .npz arrays)") from exc


def _output_names(result) -> list[str]:
    """ONNX output names: a dict's keys (Hugging Face's ModelOutput too), else output, output_1, ... The exporter got
    ["output"] alone, so a model returning {"logits", "features"} had outputs 'output' and 'mul', and --output-role
    could not name the one the user knows."""
    import torch

    if isinstance(result, dict) and all(isinstance(k, str) for k in result) and len(result) > 1 and \
            all(isinstance(v, torch.Tensor) for v in result.values()):
        return list(result)
    if isinstance(result, (tuple, list)) and len(result) > 1 and all(isinstance(v, torch.Tensor) for v in result):
        return ["output", *(f"output_{i}" for i in range(1, len(result)))]
    return ["output"]


def _is_torch_save_checkpoint(path: Path) -> bool:
    """A torch.save() zip (the usual .pt/.pth: weights or a pickled module): data.pkl without TorchScript's
    constants.pkl. torch.jit.load called it 'corrupted' ('failed locating file constants.pkl')."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n.rsplit("/", 1)[-1] for n in archive.namelist()]
    except (OSError, zipfile.BadZipFile):
        return False
    return "data.pkl" in names and "constants.pkl" not in names


def _first_line(exc: Exception) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch.export colours its messages
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:300]
