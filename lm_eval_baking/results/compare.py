"""`lm-eval-baking compare BASELINE CANDIDATE`: two lm_eval runs, paired doc by doc, one verdict.

For every task and metric both runs report (`compare_inputs`), the candidate − baseline difference with its CI,
computed by our Hugging Face `evaluate` comparison module (`evaluate_module.paired_comparison`, which wraps
`core.stats`): McNemar's exact test and the exact conditional interval for 0/1 scores, the paired bootstrap
and sign-flip test for continuous ones, whole clusters resampled where docs are correlated.

Multiplicity: a table of m rows asks m questions. The p-values are Holm-adjusted over the rows; each row's CI
is at the Bonferroni level `bonferroni_confidence(confidence, m)`, so all of them hold together with the
family-wise `confidence`, and each verdict (`core.verdicts.judge`) is judged on that CI. The overall verdict
is `core.verdicts.combine` of the rows'. A change is reported only when its Holm-adjusted p is below
1 − confidence and its CI leaves out zero.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..constants import COMPARE_FORMAT
from ..core.stats import PairedComparison, bonferroni_confidence, holm
from ..core.verdicts import Judgement, Verdict, combine, judge
from ..errors import BakingError
from ..utils.atomic import write_json
from .compare_inputs import PairedMetric, paired_metrics, read_run
from .compare_settings import CompareSettings
from .evaluate_module import comparison_from_output, paired_comparison
from .render import markdown_table


@dataclass(frozen=True)
class ComparedRow:
    task: str
    metric: str
    higher_is_better: bool | None
    clusters: int | None
    """How many clusters the docs form, when they are clustered."""
    comparison: PairedComparison
    p_holm: float
    judgement: Judgement
    alpha: float
    """1 − the family-wise confidence: the Holm-adjusted p a change must be below."""

    @property
    def change(self) -> str:
        """'worse' / 'better' ('up' / 'down' with no known direction) only when the family-wise evidence shows
        one, else 'none shown': a difference whose CI holds zero is never called a change."""
        ci = self.comparison.difference_ci
        if self.p_holm >= self.alpha or not ci.excludes_zero:
            return "none shown"
        up = self.comparison.difference > 0
        if self.higher_is_better is None:
            return "up" if up else "down"
        return "better" if up == self.higher_is_better else "worse"

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "higher_is_better": self.higher_is_better,
                "clusters": self.clusters, "comparison": self.comparison.to_dict(), "p_holm": self.p_holm,
                "change": self.change, "judgement": self.judgement.to_dict()}


@dataclass(frozen=True)
class CompareResult:
    baseline: str
    candidate: str
    settings: CompareSettings
    row_confidence: float
    rows: list[ComparedRow]
    not_compared: list[str]
    verdict: str

    def to_dict(self) -> dict:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.settings).items()}
        return _strict({"format": COMPARE_FORMAT, "baseline": self.baseline, "candidate": self.candidate,
                "settings": settings, "family_confidence": self.settings.confidence,
                "row_confidence": self.row_confidence, "verdict": self.verdict,
                "rows": [r.to_dict() for r in self.rows], "not_compared": self.not_compared})


def _strict(value):
    """JSON that any parser reads: an unbounded CI end or an undefined change (inf, nan) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def compare(baseline, candidate, settings: CompareSettings) -> CompareResult:
    """Judge CANDIDATE against BASELINE (lm_eval output folders or results files); BakingError when not comparable."""
    runs = [read_run(path, label) for path, label in ((baseline, "baseline"), (candidate, "candidate"))]
    files = [{p.resolve() for p, _, _ in run.tasks.values()} for run in runs]
    if files[0] & files[1]:
        raise BakingError(f"the baseline and the candidate are the same run ({sorted(files[0] & files[1])[0]}); "
                          "pass the lm_eval output of each model")
    pairs, not_compared = paired_metrics(*runs, settings.clusters)
    row_confidence = bonferroni_confidence(settings.confidence, len(pairs))
    comparisons = [_paired(pair, settings, row_confidence) for pair in pairs]
    adjusted = holm([c.p_value for c in comparisons])
    rows = [ComparedRow(pair.task, pair.metric, pair.higher_is_better,
                        None if pair.clusters is None else len(set(pair.clusters)), comparison, p,
                        _judge(comparison, settings, pair.higher_is_better), 1.0 - settings.confidence)
            for pair, comparison, p in zip(pairs, comparisons, adjusted)]
    return CompareResult(str(baseline), str(candidate), settings, row_confidence, rows, not_compared,
                         combine(r.judgement.verdict for r in rows))


def _paired(pair: PairedMetric, settings: CompareSettings, confidence: float) -> PairedComparison:
    out = paired_comparison().compute(predictions1=pair.baseline, predictions2=pair.candidate,
                                      n_boot=settings.resamples, seed=settings.seed, confidence=confidence,
                                      clusters=pair.clusters)
    return comparison_from_output(out)


_SEVERITY = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.FAIL: 2}


def _judge(comparison: PairedComparison, settings: CompareSettings, higher_is_better: bool | None) -> Judgement:
    """`judge` in the metric's direction; with none known, both ways (a move either way beyond the drop counts)."""
    directions = [higher_is_better] if higher_is_better is not None else [True, False]
    judged = [judge(comparison, settings.threshold, relative=settings.relative, higher_is_better=d)
              for d in directions]
    return max(judged, key=lambda j: _SEVERITY[j.verdict])


def _number(value: float, relative: bool) -> str:
    if not math.isfinite(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:+.1%}" if relative else f"{value:+.4g}"


def _percent(level: float) -> str:
    return f"{100 * level:.4g}%"


def markdown(result: CompareResult) -> str:
    """The table for stdout and the GitHub job summary, then what it rests on."""
    relative = result.settings.relative
    header = ["task", "metric", "docs", "baseline", "candidate",
              f"{'relative ' if relative else ''}change [{_percent(result.row_confidence)} CI]", "test", "p (Holm)",
              "change shown", "verdict", "why"]
    cells = []
    for row in result.rows:
        c = row.comparison
        change, ci = ((c.relative_change, c.relative_ci) if relative else (c.difference, c.difference_ci))
        if change is None or ci is None:
            shown = "–"
        elif row.change == "none shown":  # a difference not established is no change: its CI, not a value
            shown = f"none shown [{_number(ci.low, relative)}, {_number(ci.high, relative)}]"
        else:
            shown = f"{_number(change, relative)} [{_number(ci.low, relative)}, {_number(ci.high, relative)}]"
        docs = f"{c.n}" + (f" in {row.clusters} clusters" if row.clusters else "")
        direction = {True: "↑", False: "↓", None: "↕"}[row.higher_is_better]
        cells.append([row.task, f"{row.metric} {direction}", docs, f"{c.base_mean:.4g}", f"{c.other_mean:.4g}",
                      shown, c.test, f"{row.p_holm:.3g}", row.change, row.judgement.verdict.value,
                      row.judgement.reason])
    counts = {v: sum(r.judgement.verdict == v for r in result.rows) for v in Verdict}
    drop = f"{100 * result.settings.threshold:.4g}%" if relative else f"{result.settings.threshold:.4g}"
    m = len(result.rows)
    lines = [f"## lm-eval-baking compare: {result.verdict}", "",
             f"Candidate `{result.candidate}` against baseline `{result.baseline}`, paired doc by doc.", "",
             markdown_table(header, cells), "",
             f"{counts[Verdict.PASS]} pass, {counts[Verdict.FAIL]} fail, {counts[Verdict.INCONCLUSIVE]} inconclusive: "
             f"**{result.verdict}**. Allowed drop: {drop}{' relative to the baseline' if relative else ''}. "
             f"Each CI is at {_percent(result.row_confidence)} (Bonferroni over {m} row{'s' * (m != 1)}: "
             f"{_percent(result.settings.confidence)} family-wise); p-values are Holm-adjusted over the {m}. "
             "↑ higher is better, ↓ lower is better, ↕ unknown (judged both ways)."]
    if result.not_compared:
        lines += ["", "Not compared: " + "; ".join(result.not_compared) + "."]
    return "\n".join(lines) + "\n"


def write_outputs(result: CompareResult, json_path: Path | None, text: str) -> None:
    """The JSON file (atomically) and, in GitHub Actions, the job summary ($GITHUB_STEP_SUMMARY)."""
    if json_path is not None:
        write_json(json_path, result.to_dict())
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            # GitHub collects what each step appends to this file; one write of the whole table.
            with open(summary, "a", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as e:
            raise BakingError(f"cannot append the table to $GITHUB_STEP_SUMMARY ({summary}: {e.strerror}); unset it "
                              "or point it at a writable file") from None
