"""LoRA adapters as factors: merging chains, exporting a chain as one adapter, scaling a bake (half-baking).

A LoRA on a linear layer adds ΔW_k = s_k·B_k·A_k to its weight (s_k =
lora_alpha/r), and merging adds it for good, so a chain of bakes (pursuit
rounds, sequence stages) is W + Σ_k s_k·B_k·A_k: one LoRA whose A is the
rounds' A stacked along the rank and whose B is the rounds' s_k·B_k side by
side, at scale 1. `export_chain` writes that adapter, so a pursued or
multi-prompt model is one standard PEFT adapter on the original base.
`export_strength` scales one bake's update by s ("half-baking": 0 = base, 1 =
the bake, >1 extrapolates); a bake's per-epoch checkpoints are the other dial.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..constants import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from ..core import models
from ..errors import BakingError
from ..utils.text import quoted
from ..utils.versions import library_versions
from .bake_dir import BakeDir, BakeRecord
from .manifest import owned_directory
from .outputs import check_apart, check_output
from .safety import check_adapter, read_adapter_weights


def merge_adapters(model, adapter_dirs, *, base_model: str | None = None,
                   allow_pickle: bool = False) -> torch.nn.Module:
    """Merge each adapter into `model`'s weights, in order; returns the plain merged model.

    Each adapter is checked first (`safety.check_adapter`): safetensors only
    unless `allow_pickle`, and baked on `base_model` when that is given.
    """
    from peft import PeftModel

    for adapter in adapter_dirs:
        check_adapter(adapter, base_model=base_model, allow_pickle=allow_pickle)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return model


def load_chain(base_model: str, adapter_dirs, *, device: str = "cpu",
               allow_pickle: bool = False) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer): the base with the adapters merged in order, i.e. the model a chain produced."""
    adapter_dirs = list(adapter_dirs)
    for adapter in adapter_dirs:  # before the (slow) model load
        check_adapter(adapter, base_model=base_model, allow_pickle=allow_pickle)
    model, tokenizer = models.load_model(base_model, device=device)
    return merge_adapters(model, adapter_dirs, allow_pickle=allow_pickle), tokenizer


def chain_id(adapter_dirs) -> str | None:
    """sha256 over a chain's adapter weights: names the teacher a pursuit round or sequence stage bakes into
    (None for the bare base), so resuming an interrupted round cannot mix two teachers' work."""
    adapter_dirs = list(adapter_dirs)
    if not adapter_dirs:
        return None
    digest = hashlib.sha256()
    for adapter in adapter_dirs:
        digest.update((Path(adapter) / ADAPTER_WEIGHTS).read_bytes())
    return digest.hexdigest()


@dataclass
class LoraFactors:
    """One adapter's LoRA factors, with its scale s = lora_alpha/r (or /√r with rsLoRA)."""

    source: Path
    rank: int
    lora_alpha: float
    scaling: float
    target_modules: list[str]
    fan_in_fan_out: bool
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """module key -> (A [r, in], B [out, r]), keys as stored minus '.lora_A.weight'."""


def read_lora(adapter_dir: Path, allow_pickle: bool = False) -> LoraFactors:
    files = check_adapter(adapter_dir, allow_pickle=allow_pickle)
    config = files.config
    # Anything that is not plain W + s·B·A would make the concatenated adapter inexact.
    unsupported = [
        (config.get("peft_type") != "LORA", f"peft_type {config.get('peft_type')}"),
        (config.get("use_dora"), "DoRA"),
        (config.get("rank_pattern") or config.get("alpha_pattern"), "per-module rank/alpha patterns"),
        (config.get("modules_to_save"), "modules_to_save"),
        (config.get("bias", "none") != "none" or config.get("lora_bias"), "trained biases"),
        (not isinstance(config.get("target_modules"), list), "a regex target_modules"),
    ]
    for problem, what in unsupported:
        if problem:
            raise BakingError(f"{adapter_dir} uses {what}; only plain LoRA on linear layers can be chained or "
                              "scaled exactly")
    try:
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
        if rank < 1 or not math.isfinite(alpha):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise BakingError(f"{adapter_dir}/{ADAPTER_CONFIG} needs a LoRA rank r ≥ 1 and a finite lora_alpha; "
                          "re-bake or re-download the adapter") from None
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank

    weights = read_adapter_weights(files)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in weights:
        module, _, suffix = key.rpartition(".lora_")
        if suffix not in ("A.weight", "B.weight"):
            raise BakingError(f"{adapter_dir} has weight {key}; only LoRA on linear layers can be chained exactly")
        if module in factors:
            continue
        a, b = weights.get(f"{module}.lora_A.weight"), weights.get(f"{module}.lora_B.weight")
        if a is None or b is None or a.dim() != 2 or b.dim() != 2:
            raise BakingError(f"{adapter_dir}: {module} is not a LoRA on a linear layer; only those can be chained "
                              "exactly")
        factors[module] = (a.float(), b.float())
    return LoraFactors(adapter_dir, rank, alpha, scaling, list(config["target_modules"]),
                      bool(config.get("fan_in_fan_out")), factors)


def _check_one_base(base_path: str, records: list[BakeRecord], bake_dirs: list[Path]) -> str:
    """The base model's sha256, after checking every bake was made on exactly those weights."""
    expected = models.model_fingerprint(base_path)
    for bake_dir, record in zip(bake_dirs, records):
        found = record.base_model.get("sha256")
        if found != expected:
            raise BakingError(
                f"{bake_dir} was baked on a different base model (sha256 {quoted(str(found)[:12])}) than "
                f"{base_path} (sha256 {expected[:12]}); a chain must share one base: re-bake it with --model {base_path}"
            )
    return expected


def export_chain(base_model: str, round_dirs, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write one standard PEFT LoRA adapter on `base_model` equal to the chain of `round_dirs`.

    `round_dirs` are bakes in chain order (round k was baked into the base with
    rounds 1..k-1 merged). The result has rank Σ r_k and lora_alpha = rank
    (scale 1, rsLoRA off); each round's scale is folded into its B. Modules a
    round did not target get zero factors, so chains over different module
    sets export exactly too. `output` also gets a bake-style baking.json and
    round 1's held-out data, so `lm_eval ... peft=OUTPUT --tasks baking_mckl`
    scores it against the base prompted with round 1's prompt.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    round_dirs = [Path(d) for d in round_dirs]
    if not round_dirs:
        raise BakingError("export_chain needs at least one bake directory; pass the rounds in the order they "
                          "were baked")
    output = Path(output)
    check_apart(output, round_dirs)
    check_output(output, overwrite=overwrite, what="exported adapter")
    base_path = models.resolve_model(base_model)
    records = [BakeDir(d).record() for d in round_dirs]
    base_sha = _check_one_base(base_path, records, round_dirs)
    rounds = [read_lora(d) for d in round_dirs]
    if len({r.fan_in_fan_out for r in rounds}) > 1:
        raise BakingError(f"the rounds disagree on fan_in_fan_out ({[r.fan_in_fan_out for r in rounds]}); "
                          "re-bake them alike")

    total_rank = sum(r.rank for r in rounds)
    modules = sorted(set().union(*(r.factors for r in rounds)))
    tensors = {}
    for module in modules:
        a_any, b_any = next(r.factors[module] for r in rounds if module in r.factors)
        a_parts, b_parts = [], []
        for r in rounds:
            untouched = (a_any.new_zeros(r.rank, a_any.shape[1]), b_any.new_zeros(b_any.shape[0], r.rank))
            a, b = r.factors.get(module, untouched)
            if a.shape[1] != a_any.shape[1] or b.shape[0] != b_any.shape[0]:
                raise BakingError(f"{r.source}: {module} has another shape than in the other rounds; "
                                  "they need one base model")
            a_parts.append(a)
            b_parts.append(b * r.scaling)
        tensors[f"{module}.lora_A.weight"] = torch.cat(a_parts, dim=0).contiguous()
        tensors[f"{module}.lora_B.weight"] = torch.cat(b_parts, dim=1).contiguous()
    target_modules = sorted(set().union(*(r.target_modules for r in rounds)))
    lora = LoraConfig(
        r=total_rank, lora_alpha=total_rank, use_rslora=False, lora_dropout=0.0, bias="none",
        target_modules=target_modules, fan_in_fan_out=rounds[0].fan_in_fan_out, task_type="CAUSAL_LM",
        base_model_name_or_path=base_path, inference_mode=True,
    )
    first = records[0]
    # config and data/ are round 1's: it is the only round baked on the base itself,
    # so its held-out answers are samples of the base prompted with its prompt.
    record = BakeRecord(
        kind="chain_export", config=first.config, prompt_sha256=first.prompt_sha256,
        base_model={"name_or_path": base_path, "sha256": base_sha,
                    "config_sha256": models.config_fingerprint(base_path)},
        chain={
            "method": "delta_W = sum_k scaling_k * B_k @ A_k: A stacked along the rank, scaling_k * B_k side by side",
            "rank": total_rank,
            "lora_alpha": total_rank,
            "target_modules": target_modules,
            "rounds": [
                {"source": str(r.source), "prompt": rec.prompt, "rank": r.rank,
                 "lora_alpha": r.lora_alpha, "scaling": r.scaling, "target_modules": r.target_modules}
                for r, rec in zip(rounds, records)
            ],
        },
        data={"heldout": "data/heldout.jsonl", "heldout_source": str(round_dirs[0])},
        versions=library_versions(), task=first.task,
    )
    with owned_directory(output, "exported adapter") as staging:
        lora.save_pretrained(staging)
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        BakeDir(round_dirs[0]).copy_heldout_to(staging)
        record.save_pretrained(staging)
    return output


def parse_strength(value) -> float:
    """A prompt strength: a finite number ≥ 0 (0 = base, 1 = the full bake, above 1 extrapolates)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        strength = float(value)
    except (TypeError, ValueError):
        strength = float("nan")
    if not math.isfinite(strength) or strength < 0:
        raise BakingError("--strength must be a number ≥ 0 (0 = base, 1 = the full bake, above 1 extrapolates); "
                          f"got {value!r}")
    return strength


def export_strength(bake_dir: str | Path, strength, output: str | Path, *, epoch: int | None = None,
                    overwrite: bool = False, allow_pickle: bool = False) -> Path:
    """Write the bake's adapter with its update scaled by `strength` ("half-baking").

    B is multiplied by s, so ΔW becomes s·ΔW exactly; lora_alpha is left alone
    so the adapter config stays the bake's. `epoch` starts from that epoch's
    checkpoint instead of the final adapter (early stopping is the other dial).
    """
    from safetensors.torch import save_file

    strength = parse_strength(strength)
    bake_dir = Path(bake_dir)
    output = Path(output)
    check_apart(output, [bake_dir])
    check_output(output, overwrite=overwrite, what="strength export")
    source_record = BakeDir(bake_dir).record()
    source = bake_dir if epoch is None else BakeDir(bake_dir).checkpoint(epoch)
    if not (source / ADAPTER_CONFIG).is_file():
        epochs = source_record.config.get("epochs")
        raise BakingError(f"{source} holds no adapter; --epoch must be between 1 and {epochs} for this bake")
    # The base the adapter's own config names must be the one its record was baked on, or the
    # export would carry a base that does not fit its weights.
    files = check_adapter(source, allow_pickle=allow_pickle)
    named_base = files.config.get("base_model_name_or_path")
    if isinstance(named_base, str) and named_base:
        check_adapter(bake_dir, base_model=named_base, allow_pickle=allow_pickle)
    lora = read_lora(source, allow_pickle)  # refuses DoRA & co., where scaling B is not scaling ΔW
    weights = read_adapter_weights(files)
    scaled = {key: value * strength if ".lora_B." in key else value for key, value in weights.items()}
    record = BakeRecord(
        kind="strength_export", config=source_record.config, base_model=source_record.base_model,
        prompt_sha256=source_record.prompt_sha256, questions=source_record.questions, data=source_record.data,
        versions=library_versions(), task=source_record.task,
        strength={"strength": strength, "source": str(bake_dir), "epoch": epoch, "source_scaling": lora.scaling,
                  "method": "lora_B multiplied by strength: delta_W = strength * scaling * B @ A"},
    )
    with owned_directory(output, "strength export") as staging:
        shutil.copyfile(source / ADAPTER_CONFIG, staging / ADAPTER_CONFIG)
        save_file(scaled, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        BakeDir(bake_dir).copy_heldout_to(staging)
        record.save_pretrained(staging)
    return output
