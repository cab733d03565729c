"""Programmatic scorers: does one answer follow a persona? Each returns a number in [0, 1].

Scorers are declarative (`{"kind": "starts_with", "phrase": "Ahoy"}`) so a
persona can be written into a data file and rebuilt where the answers are
scored (the lm_eval task), and so user personas in a JSON/YAML file use the
same kinds.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

from ..errors import BakingError

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
