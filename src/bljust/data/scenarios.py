"""Named corpus scenarios for ``bljust corpus synth --scenario NAME``.

A scenario fixes how much audio each split of the synthetic corpus gets, from how many voices,
and which text the voices read. The presets exist so that a regime in which untranscribed audio
helps can be searched for: ``unseen`` is the original demo corpus (every scored voice is new to
training), ``in-domain`` adds untranscribed speech of the scored voices themselves (as a
company's untranscribed traffic comes from the population its test set comes from) and a
``test_unseen`` split that keeps a truly unseen population, and ``commands`` is ``in-domain``
with a narrow voice-assistant text domain instead of Austen's prose. ``benchmark`` is the regime
the search chose (benchmarks/RESULTS.md, issue 14): ``commands`` with 60 labeled minutes from 24
voices and 8 untranscribed hours; ``demo`` is the same with the untranscribed pool cut to what a
30-minute demo can use.

This module is kept free of heavy imports, so the command line can list the presets at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

TEXT_DOMAINS = ("austen", "commands")


@dataclass(frozen=True)
class Scenario:
    """Split sizes, voices and text of one synthetic corpus (all minutes are of audio)."""

    name: str
    """The preset this was made from (a key of :data:`SCENARIOS`)."""
    description: str
    """What the scenario is for, one sentence."""
    labeled_minutes: float = 12.0
    """Transcribed training audio."""
    labeled_speakers: int = 4
    """Voices of the labeled split; they read nothing anywhere else."""
    unlabeled_minutes: float = 120.0
    """Untranscribed training audio from the 40 voices of the unlabeled split."""
    in_domain_minutes: float = 0.0
    """Extra untranscribed audio, added to the unlabeled split: sentences that no scored split
    uses, read by the dev and test voices (0: none, every scored voice is new to training)."""
    test_unseen_minutes: float = 0.0
    """A ``test_unseen`` split from 6 voices that appear in no other split (0: no such split)."""
    dev_minutes: float = 8.0
    """Scored development audio, 6 voices of its own."""
    test_minutes: float = 8.0
    """Scored test audio, 6 voices of its own."""
    text: str = "austen"
    """What the voices read: ``austen`` (sentences of Jane Austen's novels) or ``commands``
    (spoken commands to a voice assistant, from :mod:`bljust.data.grammar`)."""

    def __post_init__(self) -> None:
        minutes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_minutes")}
        negative = {k: v for k, v in minutes.items() if v < 0}
        if negative:
            raise ValueError(f"scenario {self.name}: minutes cannot be negative: {negative}")
        if self.labeled_speakers < 1:
            raise ValueError(f"scenario {self.name}: labeled_speakers must be at least 1, not {self.labeled_speakers}")
        if self.text not in TEXT_DOMAINS:
            raise ValueError(f"scenario {self.name}: unknown text domain {self.text!r}; "
                             f"choose from {', '.join(TEXT_DOMAINS)}")

    def settings(self) -> dict[str, float | int | str]:
        """The resolved values (without name and description), as summary.json records them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "description")}


_IN_DOMAIN = dict(in_domain_minutes=80.0, test_unseen_minutes=8.0)

SCENARIOS: dict[str, Scenario] = {
    "unseen": Scenario(
        "unseen", "The original demo corpus: every dev and test voice is new to training, so unlabeled "
                  "audio can only help through generalisation to unseen voices."),
    "in-domain": Scenario(
        "in-domain", "Unlabeled audio includes 80 minutes from the dev and test voices (other sentences), as "
                     "untranscribed traffic comes from the population scored; test_unseen keeps a population "
                     "no split has heard.", **_IN_DOMAIN),
    "commands": Scenario(
        "commands", "in-domain, reading voice-assistant commands (alarms, timers, calls, music, weather, "
                    "smart home): a narrow domain, as most deployed recognisers serve.",
        **_IN_DOMAIN, text="commands"),
    # The regime chosen on dev with supervised and PL, 3 seeds (RESULTS.md, "the regime chosen"): 24 labeled
    # voices give a seed model whose LM-decoded pseudo-labels are about 8 % CER, and labeled : unlabeled is
    # 1 : 8, as LibriSpeech's 100 h : 860 h.
    "benchmark": Scenario(
        "benchmark", "commands with 60 labeled minutes from 24 voices and 8 untranscribed hours (400 minutes from "
                     "40 voices, 80 in-domain): the regime of the method benchmark.",
        **_IN_DOMAIN, text="commands", labeled_minutes=60.0, labeled_speakers=24, unlabeled_minutes=400.0),
    # A demo run's methods see a few hundred unlabeled batches, a few passes over 200 minutes at most: more
    # hours would only cost synthesis time within the demo's 30 minutes.
    "demo": Scenario(
        "demo", "benchmark's labeled split and domain with 200 untranscribed minutes (120 from 40 voices, 80 "
                "in-domain): what `bljust demo` makes.",
        **_IN_DOMAIN, text="commands", labeled_minutes=60.0, labeled_speakers=24),
}


def resolve_scenario(scenario: str | Scenario = "unseen", **overrides: float | int | str | None) -> Scenario:
    """A preset (by name) or a given Scenario, with every override that is not None applied."""
    if isinstance(scenario, str):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        scenario = SCENARIOS[scenario]
    fields = {f.name for f in dataclasses.fields(Scenario)} - {"name", "description"}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"not a scenario setting: {', '.join(sorted(unknown))}")
    return dataclasses.replace(scenario, **{k: v for k, v in overrides.items() if v is not None})
