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

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BakingError
from .scorers import Scorer

# ---------------------------------------------------------------------------- personas

PIRATE_WORDS = ("ahoy matey mateys arr arrr aye ye yer sea seas ship ships captain treasure sail sailor sailors "
                "crew parrot plunder pirate pirates buccaneer shiver timbers landlubber hearty").split()

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
    # The same prompt, scored more broadly: any pirate word anywhere in the answer. On the default model the
    # prompted base almost never opens with "Ahoy" once a conversation has started, but keeps talking like a
    # pirate for a while, so this persona is the one to measure the pirate prompt's drift with.
    _builtin("pirate_speech", "You are a pirate. Start every answer with 'Ahoy!'",
             {"kind": "keywords", "words": PIRATE_WORDS},
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
    return next(iter(personas_for_prompt(prompt, candidates)), None)


def personas_for_prompt(prompt: str, candidates: dict[str, Persona] | None = None) -> list[Persona]:
    """Every persona whose system prompt is exactly `prompt` (one prompt may have several checks: pirate's
    opening word and pirate_speech's words anywhere)."""
    return [p for p in (candidates or BUILTIN_PERSONAS).values() if p.system_prompt.strip() == prompt.strip()]


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

