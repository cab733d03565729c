"""Loading adapters other people made: never run their code, and never on the wrong base.

Every place that loads an adapter (pursuit chains, strength exports, the
lm_eval tasks' `peft=` bake, the forgetting runs) goes through
`check_adapter` first:

- weights must be `adapter_model.safetensors`, a format that holds only
  tensors. A pickle-only adapter (`adapter_model.bin`) is refused: unpickling
  can run any code its author put in the file. `allow_pickle=True`
  (`--allow-pickle`) opts in for sources the user trusts; even then it is read
  with torch's restricted `weights_only` unpickler.
- on a local base whose weights are safetensors, every LoRA pair must fit the
  layer it targets (`check_shapes`, read from the files' headers): PEFT would
  otherwise stop with a size-mismatch traceback, or say nothing at all.
- a bake records the sha256 of its base model's weights in baking.json. When
  the base it is about to be loaded on is known, the two must match, or the
  adapter would silently apply its deltas to other weights. The config.json
  hash is compared first (instant); the weights' hash is cached per file size
  and mtime (`models.model_fingerprint`), so only the first check of a base
  reads its weights.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..constants import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PICKLE_WEIGHTS
from ..core import models
from ..errors import BakingError
from ..utils.jsonl import read_json_object
from ..utils.text import first_line, quoted
from .bake_dir import recorded_base_model


@dataclass(frozen=True)
class AdapterFiles:
    """A checked adapter folder."""

    directory: Path
    config: dict
    weights: Path
    pickled: bool
    """True when the weights are a pickle the user allowed (allow_pickle)."""


def check_adapter(directory: str | os.PathLike, *, base_model: str | os.PathLike | None = None,
                  allow_pickle: bool = False) -> AdapterFiles:
    """Check that `directory` is a PEFT adapter that is safe to load (on `base_model`, when given)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BakingError(f"{directory} is not a PEFT adapter directory (not a folder); pass a PEFT adapter folder "
                          f"({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}), e.g. one made by `lm-eval-baking bake`")
    config = _read_adapter_config(directory)
    safe, pickled = directory / ADAPTER_WEIGHTS, directory / PICKLE_WEIGHTS
    if safe.is_file():
        _check_safetensors(safe)
        files = AdapterFiles(directory, config, safe, pickled=False)
    elif pickled.is_file():
        if not allow_pickle:
            raise BakingError(
                f"{directory} has only pickle weights ({PICKLE_WEIGHTS}), and loading a pickle can run any code "
                f"its author put in it; convert it to {ADAPTER_WEIGHTS}, or pass --allow-pickle "
                "(allow_pickle=True) if you trust where it came from"
            )
        files = AdapterFiles(directory, config, pickled, pickled=True)
    else:
        raise BakingError(f"{directory} holds no adapter weights ({ADAPTER_WEIGHTS}); pass a PEFT adapter folder")
    if base_model is not None:
        if not files.pickled:
            check_shapes(directory, files.weights, base_model)
        check_base(directory, base_model)
    return files


def check_shapes(directory: Path, weights: Path, base_model: str | os.PathLike) -> None:
    """Refuse an adapter whose LoRA matrices do not fit the base's layers (another size of model).

    Only the safetensors headers are read. A module the base files do not hold (a tied lm_head, a
    quantised layer) and a base that is not a local safetensors model are left to PEFT.
    """
    base_shapes = _base_shapes(base_model)
    if not base_shapes:
        return
    adapter_shapes = _header_shapes(weights)
    for key, a_shape in sorted(adapter_shapes.items()):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        b_shape = adapter_shapes.get(f"{module}.lora_B.weight")
        base = base_shapes.get(module.removeprefix("base_model.model.") + ".weight")
        if b_shape is None or base is None or len(a_shape) != 2 or len(b_shape) != 2 or len(base) != 2:
            continue
        fan_in, fan_out = a_shape[1], b_shape[0]
        # (out, in) for a Linear, (in, out) for GPT-2's Conv1D: either orientation fits.
        if (fan_out, fan_in) != tuple(base) and (fan_in, fan_out) != tuple(base):
            raise BakingError(
                f"{directory} does not fit {models.resolve_model(base_model)}: its LoRA on "
                f"{quoted(module.removeprefix('base_model.model.'))} is for a {fan_in}->{fan_out} layer, the base's "
                f"weight there is {base[0]}x{base[1]}; load it on the base it was made for{_named_base(directory)}")


def _named_base(directory: Path) -> str:
    """' (adapter_config.json names B)', or nothing when the config names no base."""
    config = read_json_object(directory / ADAPTER_CONFIG) or {}
    name = config.get("base_model_name_or_path")
    return f" ({ADAPTER_CONFIG} names {quoted(name)})" if isinstance(name, str) and name else ""


def _header_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape of a safetensors file, from its header alone; {} when it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception:  # noqa: BLE001 - a damaged base file is the loader's to report, not the adapter check's
        return {}


def _base_shapes(base_model) -> dict[str, list[int]]:
    try:
        path = Path(models.resolve_model(base_model))
    except BakingError:
        return {}
    if not path.is_dir():
        return {}
    shapes: dict[str, list[int]] = {}
    for file in sorted(path.glob("*.safetensors")):
        shapes.update(_header_shapes(file))
    return shapes


def read_adapter_weights(files: AdapterFiles) -> dict:
    """The adapter's tensors by name, from a checked folder."""
    import torch

    try:
        if not files.pickled:
            from safetensors.torch import load_file

            return load_file(str(files.weights))
        return torch.load(files.weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors and torch raise their own types for damaged files
        raise BakingError(f"cannot read {files.weights} ({first_line(e)}); the file is damaged: "
                          "re-bake or re-download it") from None


def check_base(directory: str | os.PathLike, base_model: str | os.PathLike) -> None:
    """Refuse `directory` on `base_model` when its baking.json names other base weights.

    Adapters without a baking.json (not made here) or whose base cannot be
    hashed locally (a hub id not downloaded) are left to PEFT's own shape checks.
    """
    directory = Path(directory)
    recorded = recorded_base_model(directory)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        return
    base_path = models.resolve_model(base_model)
    try:
        config_sha = models.config_fingerprint(base_path)
        if recorded.get("config_sha256") not in (None, config_sha):
            actual = f"config sha256 {str(config_sha)[:12]}"
        else:
            sha = models.model_fingerprint(base_path)
            actual = None if sha == recorded["sha256"] else f"sha256 {sha[:12]}"
    except (OSError, ValueError):
        return  # nothing local to hash: loading will fail or PEFT will check the shapes
    if actual is not None:
        name = quoted(recorded.get("name_or_path", "?"))
        raise BakingError(
            f"{directory} was baked on a different base model ({name}, sha256 {quoted(recorded['sha256'][:12])}) than "
            f"{base_path} ({actual}); load it on the base it was baked on, or re-bake the prompt with "
            f"--model {base_path}"
        )


def _read_adapter_config(directory: Path) -> dict:
    path = directory / ADAPTER_CONFIG
    if not path.is_file():
        raise BakingError(f"{directory} is not a PEFT adapter directory (no {ADAPTER_CONFIG}); "
                          "pass a folder made by `lm-eval-baking bake`")
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise BakingError(f"{path} is damaged (not a JSON object); re-bake or re-download the adapter")
    return config


def _check_safetensors(path: Path) -> None:
    """Read the header only: a truncated or foreign file fails here with a clear message, not deep in PEFT."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - SafetensorError and OSError variants
        raise BakingError(f"{path} is not a readable safetensors file ({first_line(e, 120)}); "
                          "re-bake or re-download the adapter") from None
