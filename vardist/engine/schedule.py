"""Search schedules across scales: which scales are searched, how many members each item keeps
after each, and by which rule (`--search SCHEDULE`, API `search=`).

Grammar (docs/search.md, "Search across scales"):

    SCHEDULE := PRESET | STEP ("," STEP)*
    STEP     := [RULE ":"] POP "@" SCALE ["/" CANDIDATES]
    RULE     := density | reward | beam (= reward) | cluster | resample

e.g. `beam:8@1,4@3,1@6`. A step without a rule takes the previous step's. POP members are kept
after scale SCALE; CANDIDATES (default: the run's n) are the item's candidates drawn at that
scale, split evenly over its members (each draws at least one). Scales rise strictly and the
last step keeps 1 (the image written per sample). `tts-var` expands, for a model of S scales,
to TTS-VAR's shrinking population 8 8 6 6 6 4 2 2 2 1 1 1 1 (resampled onto S scales), one
candidate per member, KMeans pruning at the first third of the scales and reward resampling
after.

Rules that read images decode one item's candidate previews at a time, `preview_chunk(H, W)`
at most at once: a budget of PREVIEW_PIXELS = 2^22 pixels per decode batch, between 1 and
PREVIEW_CHUNK = 256 (256 up to 128 x 128, 64 at 256 x 256, 4 at 1024 x 1024), fixed by the
output size so a preview's bytes never depend on the machine or the batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vardist.io.conditions import InputError

RULES = ("density", "reward", "cluster", "resample")
ALIASES = {"beam": "reward"}
NEEDS_VERIFIER = ("reward", "resample")
PRESETS = ("tts-var",)
# TTS-VAR's --bs_sis for Infinity's 13 scales: the population at each scale
TTS_VAR_POPULATION = (8, 8, 6, 6, 6, 4, 2, 2, 2, 1, 1, 1, 1)

# Candidate previews decoded at once (engine.multiscale): one item's candidates, at most
# preview_chunk(H, W) of them, are decoded together (`model.preview_candidates`: a copy of the
# accumulated latent per candidate and one decode batch; no KV cache is copied). The chunk is
# arithmetic on the output size, the same on every machine, so bytes never depend on the
# hardware or on which items share a batch: a budget of PREVIEW_PIXELS pixels per decode
# batch, capped at PREVIEW_CHUNK. 2^22 pixels keep 256 up to 128 x 128 (toy-digits, toy-shapes:
# their bytes are as before), and give 64 at 256 x 256 (VAR-d16..d30, FlexVAR, the 256 px
# fixtures), 16 at 512 x 512 and 4 at 1024 x 1024 (Infinity): about 10 GB of VAE decode per
# chunk by the memory planner's estimate for VAR-d16, VAR-d36 and Infinity-2B alike.
PREVIEW_CHUNK = 256
PREVIEW_PIXELS = 2 ** 22

_STEP = re.compile(r"^(?:(?P<rule>[a-z-]+):)?(?P<pop>\d+)@(?P<scale>\d+)(?:/(?P<cands>\d+))?$")


@dataclass(frozen=True)
class SearchStep:
    rule: str
    population: int            # members per item kept after this scale
    scale: int
    candidates: int | None     # the item's candidates at this scale; None: the run's n

    def __str__(self) -> str:
        tail = f"/{self.candidates}" if self.candidates is not None else ""
        return f"{self.rule}:{self.population}@{self.scale}{tail}"


@dataclass(frozen=True)
class SearchSchedule:
    steps: tuple[SearchStep, ...]

    def __str__(self) -> str:  # canonical: what run.json and the fingerprint hold
        return ",".join(map(str, self.steps))

    @property
    def needs_verifier(self) -> bool:
        return any(s.rule in NEEDS_VERIFIER for s in self.steps)

    def one_scale(self) -> int | None:
        """The searched scale when this is today's one-scale search (density, one member, the
        run's n), which runs through the one-scale pipeline unchanged; else None."""
        if len(self.steps) == 1:
            s = self.steps[0]
            if s.rule == "density" and s.population == 1 and s.candidates is None:
                return s.scale
        return None

    def candidates(self, step: SearchStep, n: int) -> int:
        return step.candidates if step.candidates is not None else n


def parse_search(text: str, num_scales: int | None) -> SearchSchedule:
    """Parse and check a schedule; InputError (param "search") names the bad token."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"search must be a schedule such as 'beam:8@1,4@3,1@6' or a preset "
                         f"({', '.join(PRESETS)}), got {text!r}", param="search")
    text = text.strip().lower()
    if text in PRESETS:
        if num_scales is None:
            raise InputError(f"preset {text!r} needs the model's number of scales",
                             param="search")
        return tts_var(num_scales)
    steps: list[SearchStep] = []
    rule = None
    for token in (t.strip() for t in text.split(",")):
        m = _STEP.match(token)
        if m is None:
            raise InputError(f"search step {token!r} is not RULE:POP@SCALE[/CANDIDATES] (e.g. "
                             f"'beam:8@1'); rules: {', '.join(RULES)} (beam = reward)",
                             param="search")
        if m["rule"] is not None:
            rule = ALIASES.get(m["rule"], m["rule"])
            if rule not in RULES:
                raise InputError(f"search step {token!r}: unknown rule {m['rule']!r}; choose "
                                 f"one of {', '.join(RULES)} (beam = reward)", param="search")
        if rule is None:
            raise InputError(f"search step {token!r}: the first step names its rule, e.g. "
                             f"'density:{token}'", param="search")
        pop, scale = int(m["pop"]), int(m["scale"])
        cands = int(m["cands"]) if m["cands"] is not None else None
        if pop < 1 or (cands is not None and cands < 1):
            raise InputError(f"search step {token!r}: population and candidates must be >= 1",
                             param="search")
        if num_scales is not None and scale >= num_scales:
            raise InputError(f"search step {token!r}: scale {scale} is beyond this model's "
                             f"{num_scales} scales; use 0..{num_scales - 1}", param="search")
        if steps and scale <= steps[-1].scale:
            raise InputError(f"search step {token!r}: scales must rise strictly (after scale "
                             f"{steps[-1].scale})", param="search")
        steps.append(SearchStep(rule, pop, scale, cands))
    if steps[-1].population != 1:
        raise InputError(f"search step {steps[-1]}: the last step must keep 1 member (the image "
                         f"written per sample), e.g. end with '1@{steps[-1].scale}' or add a "
                         f"later step", param="search")
    return SearchSchedule(tuple(steps))


def tts_var(num_scales: int) -> SearchSchedule:
    """TTS-VAR's population schedule on `num_scales` scales (see the module docstring)."""
    last = len(TTS_VAR_POPULATION) - 1
    pop = [TTS_VAR_POPULATION[round(s * last / max(num_scales - 1, 1))]
           for s in range(num_scales)] + [1]
    coarse = (num_scales - 1) // 3
    steps = [SearchStep("cluster" if s <= coarse else "resample", pop[s + 1], s, pop[s])
             for s in range(num_scales) if pop[s + 1] < pop[s] or (s == 0 and pop[0] > 1)]
    return SearchSchedule(tuple(steps))


def preview_chunk(image_hw: tuple[int, int] | None) -> int:
    """Previews of one item's candidates decoded at once for images of image_hw = (H, W):
    PREVIEW_PIXELS // (H * W), between 1 and PREVIEW_CHUNK; PREVIEW_CHUNK when the size is not
    known (a model object that does not state `image_hw`)."""
    if image_hw is None:
        return PREVIEW_CHUNK
    h, w = (int(v) for v in image_hw)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h} x {w}")
    return max(1, min(PREVIEW_CHUNK, PREVIEW_PIXELS // (h * w)))


@dataclass(frozen=True)
class StepMembers:
    """What one step of a schedule holds per item (engine.multiscale's arithmetic)."""

    scale: int
    before: int     # members entering the step
    draws: int      # candidates each of them draws (the most any one draws)
    after: int      # members kept after it
    previews: int   # candidate previews decoded at once (0: the rule decodes none)


def step_members(schedule: SearchSchedule, n: int, previews: bool,
                 image_hw: tuple[int, int] | None = None) -> list[StepMembers]:
    """Per step, the members per item and what they draw, by the arithmetic engine.multiscale
    follows: the item's candidates are split over its members (each draws at least one); a
    rule keeps at most its candidates (resample draws POP with replacement); `reward` and
    `resample` decode a preview per candidate, one item's chunk of preview_chunk(image_hw) at
    a time, and `cluster` does when `previews` (a verifier whose image tower it may read).
    Used to plan memory before a model loads (vardist.models.memory.estimate_population)."""
    chunk = preview_chunk(image_hw)
    out, before = [], 1
    for st in schedule.steps:
        total = max(schedule.candidates(st, n), before)
        after = st.population if st.rule == "resample" else min(st.population, total)
        decoded = st.rule in NEEDS_VERIFIER or (st.rule == "cluster" and previews)
        out.append(StepMembers(st.scale, before, -(-total // before), after,
                               min(total, chunk) if decoded else 0))
        before = after
    return out
