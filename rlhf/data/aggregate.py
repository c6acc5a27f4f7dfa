"""From votes to a preference, and how far the annotators agree.

Majority: the strictly most frequent choice among a comparison's votes ("a", "b" or "tie"); when several
choices are equally frequent the outcome is a tie. A vote without an annotator (public datasets) counts
as one vote in the majority and takes no part in agreement. A named annotator counts once per comparison
(their first vote): a comparison seen in several records, or a file imported twice, must not let one
person outvote the others or agree with themselves.

Agreement is accumulated one comparison at a time in constant memory (a 3×3 coincidence matrix, a few
sums per number of raters, three counters per annotator), so it never holds the data:

- Krippendorff's alpha (nominal), over every comparison with at least two named annotators;
- Fleiss' kappa, which needs the same number of raters per unit: over the comparisons with the most
  common number of raters (≥ 2), and the result says how many that was;
- each annotator's agreement with the leave-one-out majority: the unique most frequent choice of the
  *other* named annotators of the same comparison. Including the annotator's own vote would let them
  agree with themselves (with two raters, always). Comparisons where the others have no unique majority
  (or there are no others) do not count for that annotator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from rlhf.data.records import Choice, Comparison, PreferenceRecord, Vote, assistant

Ties = Literal["drop", "keep"]
CHOICES: tuple[Choice, ...] = ("a", "b", "tie")
_INDEX = {choice: index for index, choice in enumerate(CHOICES)}
_SWAP: dict[Choice, Choice] = {"a": "b", "b": "a", "tie": "tie"}
# each vote relative to the outcome, by whether b won (and the pair was swapped)
_RELATIVE = {
    False: {"a": "chosen", "b": "rejected", "tie": "tie"},
    True: {"a": "rejected", "b": "chosen", "tie": "tie"},
}


def majority(choices: Iterable[Choice]) -> Choice:
    """The strictly most frequent choice; equally frequent leaders (or no votes) make a tie."""
    counts = _counts(choices)
    top = max(counts)
    return CHOICES[counts.index(top)] if top and counts.count(top) == 1 else "tie"


def counted_votes(votes: list[Vote], excluded: frozenset[str]) -> list[Vote]:
    """The votes that count: every anonymous vote, and each named annotator's first unless excluded."""
    if len(votes) == 1:  # most comparisons: one vote, counted unless its annotator is excluded
        annotator = votes[0].annotator
        return [] if annotator is not None and annotator in excluded else list(votes)
    seen = set(excluded)
    counted = []
    for vote in votes:
        if vote.annotator is None or vote.annotator not in seen:
            counted.append(vote)
            if vote.annotator is not None:
                seen.add(vote.annotator)
    return counted


def oriented(votes: list[Vote], swapped: bool) -> list[Vote]:
    """Votes on (b, a) as votes on (a, b) when `swapped`: a and b trade places, a tie stays a tie."""
    if not swapped:
        return votes
    return [Vote(vote.annotator, _SWAP[vote.choice]) for vote in votes]


def aggregate(
    comparison: Comparison, votes: list[Vote], ties: Ties, min_votes: int
) -> PreferenceRecord | str:
    """The preference record the votes make, or the reason there is none (for the quarantine).

    A kept tie keeps the comparison's order: chosen is response a, rejected response b, `tie=True`.
    """
    if len(votes) < min_votes:
        return f"too few votes: {len(votes)} < min_votes {min_votes}"
    outcome = votes[0].choice if len(votes) == 1 else majority(vote.choice for vote in votes)
    if outcome == "tie" and ties == "drop":
        return "tie dropped (ties=drop)"
    swap = outcome == "b"
    chosen, rejected = (
        (comparison.response_b, comparison.response_a)
        if swap
        else (comparison.response_a, comparison.response_b)
    )
    relative = _RELATIVE[swap]
    named = [vote for vote in votes if vote.annotator is not None]
    return PreferenceRecord(
        prompt=comparison.prompt,
        chosen=assistant(chosen),
        rejected=assistant(rejected),
        margin=comparison.margin,
        tie=outcome == "tie",
        annotators=[str(vote.annotator) for vote in named],
        votes=[relative[vote.choice] for vote in named],
        source_file=comparison.source.file,
        source_row=comparison.source.row,
    )


@dataclass(frozen=True)
class AnnotatorStats:
    """One annotator's votes, and how many of the comparisons they shared agreed with the others' majority."""

    votes: int
    compared: int
    agreed: int

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


@dataclass(frozen=True)
class Agreement:
    """Inter-annotator agreement over an import; None where a statistic is undefined (no variation)."""

    krippendorff_alpha: float | None
    alpha_units: int  # comparisons with at least two named annotators
    fleiss_kappa: float | None
    fleiss_units: int  # comparisons Fleiss' kappa used: those with `fleiss_raters` annotators
    fleiss_raters: int
    annotators: dict[str, AnnotatorStats]

    def to_json(self) -> dict[str, Any]:
        """The import-wide figures, as the manifest records them (annotators are recorded apart)."""
        return {
            "krippendorff_alpha": self.krippendorff_alpha,
            "units": self.alpha_units,
            "fleiss_kappa": self.fleiss_kappa,
            "fleiss_units": self.fleiss_units,
            "fleiss_raters": self.fleiss_raters,
        }

    def below(self, threshold: float) -> frozenset[str]:
        """Annotators whose agreement is under `threshold`; one never compared with anyone is kept."""
        return frozenset(
            name
            for name, stats in self.annotators.items()
            if stats.agreement is not None and stats.agreement < threshold
        )


class AgreementTracker:
    """Accumulates agreement one comparison's votes at a time."""

    def __init__(self) -> None:
        self._coincidence = [[0.0] * len(CHOICES) for _ in CHOICES]
        self._alpha_units = 0
        self._fleiss: dict[int, list[float]] = {}  # raters -> [units, Σ P_i, n_a, n_b, n_tie]
        self._annotators: dict[str, list[int]] = {}  # name -> [votes, compared, agreed]

    def add(self, votes: list[Vote]) -> None:
        named = [vote for vote in votes if vote.annotator is not None]
        if not named:  # anonymous votes (public datasets) take no part in agreement
            return
        for vote in named:
            self._annotators.setdefault(str(vote.annotator), [0, 0, 0])[0] += 1
        raters = len(named)
        if raters < 2:
            return
        counts = _counts(vote.choice for vote in named)
        self._alpha_units += 1
        for c, n_c in enumerate(counts):
            for k, n_k in enumerate(counts):
                self._coincidence[c][k] += n_c * (n_k - (c == k)) / (raters - 1)
        fleiss = self._fleiss.setdefault(raters, [0.0] * (2 + len(CHOICES)))
        fleiss[0] += 1
        fleiss[1] += (sum(n * n for n in counts) - raters) / (raters * (raters - 1))
        for index, n in enumerate(counts):
            fleiss[2 + index] += n
        for vote in named:
            others = list(counts)
            others[_INDEX[vote.choice]] -= 1
            top = max(others)
            if others.count(top) == 1:
                stats = self._annotators[str(vote.annotator)]
                stats[1] += 1
                stats[2] += CHOICES[others.index(top)] == vote.choice

    def result(self) -> Agreement:
        raters, kappa, units = self._fleiss_kappa()
        return Agreement(
            krippendorff_alpha=self._alpha(),
            alpha_units=self._alpha_units,
            fleiss_kappa=kappa,
            fleiss_units=units,
            fleiss_raters=raters,
            annotators={name: AnnotatorStats(*stats) for name, stats in sorted(self._annotators.items())},
        )

    def _alpha(self) -> float | None:
        """α = 1 − D_o/D_e = 1 − (n − 1)·Σ_{c≠k} o_ck / Σ_{c≠k} n_c·n_k, from the coincidence matrix o."""
        o = self._coincidence
        totals = [sum(row) for row in o]
        n = sum(totals)
        off = range(len(CHOICES))
        observed = sum(o[c][k] for c in off for k in off if c != k)
        expected = sum(totals[c] * totals[k] for c in off for k in off if c != k)
        return None if expected == 0 else 1 - (n - 1) * observed / expected

    def _fleiss_kappa(self) -> tuple[int, float | None, int]:
        """κ = (P̄ − P̄_e)/(1 − P̄_e) over the units with the most common number of raters (ties: more raters)."""
        if not self._fleiss:
            return 0, None, 0
        raters = max(self._fleiss, key=lambda m: (self._fleiss[m][0], m))
        units, sum_p, *totals = self._fleiss[raters]
        p_bar = sum_p / units
        p_e = sum((total / (units * raters)) ** 2 for total in totals)
        kappa = None if p_e == 1 else (p_bar - p_e) / (1 - p_e)
        return raters, kappa, int(units)


def _counts(choices: Iterable[Choice]) -> list[int]:
    counts = [0] * len(CHOICES)
    for choice in choices:
        counts[_INDEX[choice]] += 1
    return counts
