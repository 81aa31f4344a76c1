"""The router: which configured targets may take a batch, in which order, and why.

It reads only what is already known (config checks, breakers, the health cache, measured
speeds), so routing never waits on the network. Its `Plan` records the choice and the reason
for every target it did not choose; the command line prints it.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .breaker import Breakers
from .config import CloudGpu
from .costmodel import LearnedCosts
from .errors import NoUsableTarget, UserError
from .health import HealthCache
from .model import CostEstimate, SpeechRequest
from .plugins import Provider
from .speed import SpeedBook
from .target import Quality, Target
from .targets import TargetCheck

PREFERRED_NOTE = "preferred by audio.cloud_gpu.provider"
LISTED_NOTE = "preferred: number {rank} in the list given to CloudGPUManager"


@attrs.frozen
class RouteOptions:
    """The user's routing flags."""

    cloud_gpu: bool = False
    local_audio: bool = False
    draft: bool = False

    def __attrs_post_init__(self) -> None:
        if self.cloud_gpu and self.local_audio:
            raise UserError("--cloud-gpu and --local-audio exclude each other; give one")
        if self.cloud_gpu and self.draft:
            raise UserError("--draft uses the local draft voice; drop --cloud-gpu or --draft")

    @property
    def mode(self) -> str:
        if self.cloud_gpu:
            return "--cloud-gpu"
        if self.local_audio:
            return "--local-audio"
        return "default"


@attrs.frozen
class Choice:
    """A usable target, with what the batch would cost there."""

    target: Target
    provider: Provider
    cost: CostEstimate
    remote: bool
    quality: Quality
    note: str = ""


@attrs.frozen
class Rejection:
    name: str
    kind: str
    reason: str


@attrs.frozen
class Plan:
    """The ordered candidates for a batch, every rejection, and the quality tier chosen."""

    candidates: tuple[Choice, ...]
    rejected: tuple[Rejection, ...]
    quality: Quality
    reason: str
    mode: str

    @property
    def first(self) -> Choice:
        return self.candidates[0]

    def explain(self) -> list[str]:
        """Lines a person can read: the order, why, and why not the others."""
        lines = [f"routing ({self.mode}): {self.reason}"]
        for rank, choice in enumerate(self.candidates, 1):
            where = "remote" if choice.remote else "local"
            note = f"; {choice.note}" if choice.note else ""
            lines.append(
                f"  {rank}. {choice.target.name} ({choice.target.kind}, {where}, "
                f"{choice.quality}): ${choice.cost.usd:.4f} estimated ({choice.cost.basis}){note}"
            )
        for rejection in self.rejected:
            lines.append(f"  not {rejection.name} ({rejection.kind}): {rejection.reason}")
        return lines

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "quality": self.quality,
            "reason": self.reason,
            "candidates": [
                {
                    "target": c.target.name,
                    "kind": c.target.kind,
                    "remote": c.remote,
                    "quality": c.quality,
                    "estimated_usd": c.cost.usd,
                    "basis": c.cost.basis,
                    "note": c.note,
                }
                for c in self.candidates
            ],
            "rejected": [attrs.asdict(r) for r in self.rejected],
        }


class Router:
    def __init__(
        self,
        checks: Sequence[TargetCheck],
        cloud: CloudGpu,
        health: HealthCache,
        breakers: Breakers,
        speeds: SpeedBook,
        *,
        learned: LearnedCosts | None = None,
        preference: Sequence[str] = (),
    ) -> None:
        self.checks = list(checks)
        #: Target names in the caller's order of preference (a list of providers given in
        #: code); when set it takes the place of audio.cloud_gpu.provider.
        self.preference = tuple(preference)
        self.cloud = cloud
        self.health = health
        self.breakers = breakers
        self.speeds = speeds
        #: What the journal measured per target; None prices with the providers' priors alone.
        self.learned = learned

    def pairs(self) -> list[tuple[Target, Provider]]:
        """Every target whose plugin loaded and whose settings validate."""
        return [
            (c.target, c.provider)
            for c in self.checks
            if c.target is not None and c.provider is not None
        ]

    def estimate(
        self, target: Target, provider: Provider, batch: Sequence[SpeechRequest]
    ) -> CostEstimate:
        """What `batch` costs on `target`: the provider's estimate, corrected by what the
        target's jobs measured. Raises what the plugin raises, or `TypeError` when it returns
        something else than a `CostEstimate`."""
        cost = provider.estimate_cost(target, list(batch))
        if not isinstance(cost, CostEstimate):
            raise TypeError("estimate_cost returned no CostEstimate")
        return self._learnt(cost, target, provider, batch)

    def observe_cost(self, target: str, chars: int, exec_ms: int | None) -> None:
        """A completed job's measurement, so later estimates of this router learn from it."""
        if self.learned is not None:
            self.learned.observe(target, chars, exec_ms)

    def _learnt(
        self,
        cost: CostEstimate,
        target: Target,
        provider: Provider,
        batch: Sequence[SpeechRequest],
    ) -> CostEstimate:
        if self.learned is None:
            return cost
        return self.learned.apply(cost, target, provider.info, batch)

    def plan(self, batch: Sequence[SpeechRequest], options: RouteOptions) -> Plan:
        """Order the usable targets for `batch`; raise `NoUsableTarget` naming every reason."""
        rejected: list[Rejection] = []
        usable: list[Choice] = []
        for check in self.checks:
            choice = self._consider(check, batch, options, rejected)
            if choice is not None:
                usable.append(choice)
        chars = sum(len(r.text) for r in batch)
        chosen, quality, reason = self._tier(usable, options, rejected, chars)
        if not chosen:
            raise NoUsableTarget(self._none_message(options, rejected))
        return Plan(tuple(chosen), tuple(rejected), quality, reason, options.mode)

    def _consider(
        self,
        check: TargetCheck,
        batch: Sequence[SpeechRequest],
        options: RouteOptions,
        rejected: list[Rejection],
    ) -> Choice | None:
        def reject(reason: str) -> None:
            rejected.append(Rejection(check.name, check.kind, reason))

        if check.target is None or check.provider is None:
            reject(check.reason)
            return None
        target, provider = check.target, check.provider
        remote = provider.info.remote
        mode_reason = self._mode_rejects(remote, provider.info.quality, options)
        if mode_reason:
            reject(mode_reason)
            return None
        breaker = self.breakers.of(target.name)
        if not breaker.available():
            reject(breaker.describe())
            return None
        health = self.health.get(target.name)
        if health is not None and not health.ok:
            reject(f"unhealthy: {health.detail or 'health check failed'}")
            return None
        try:
            cost = provider.estimate_cost(target, list(batch))
        except Exception as exc:  # a plugin bug costs this target, not the run
            reject(f"estimate_cost failed: {type(exc).__name__}: {exc}")
            return None
        if not isinstance(cost, CostEstimate):
            reject("estimate_cost returned no CostEstimate")
            return None
        cost = self._learnt(cost, target, provider, batch)
        note = "health not checked yet" if health is None else ""
        return Choice(target, provider, cost, remote, provider.info.quality, note)

    def _mode_rejects(self, remote: bool, quality: Quality, options: RouteOptions) -> str:
        if options.cloud_gpu and not remote:
            return "local target; --cloud-gpu keeps remote targets only"
        if options.local_audio and remote:
            return "remote target; --local-audio keeps local targets only"
        if options.mode != "default" or quality == "draft":
            return ""
        if remote and not self.cloud.enabled:
            return "audio.cloud_gpu.enabled is false in the config"
        if not remote and self.cloud.enabled and not self.cloud.fallback_to_local:
            return "audio.cloud_gpu.fallback_to_local is false (use --local-audio to use it)"
        return ""

    def _tier(
        self, usable: list[Choice], options: RouteOptions, rejected: list[Rejection], chars: int
    ) -> tuple[list[Choice], Quality, str]:
        csm = [c for c in usable if c.quality == "csm"]
        draft = [c for c in usable if c.quality == "draft"]
        if options.draft:
            for c in csm:
                rejected.append(Rejection(c.target.name, c.target.kind, "--draft asks for draft"))
            return self._order(draft, options, chars), "draft", "draft voice requested with --draft"
        if csm:
            for c in draft:
                rejected.append(
                    Rejection(
                        c.target.name,
                        c.target.kind,
                        "draft quality: used only when no CSM-quality target is usable "
                        "(or with --draft)",
                    )
                )
            return self._order(csm, options, chars), "csm", self._csm_reason(options)
        reason = "no CSM-quality target is usable, so the free draft voice is used"
        return self._order(draft, options, chars), "draft", reason

    @staticmethod
    def _csm_reason(options: RouteOptions) -> str:
        if options.cloud_gpu:
            return "cheapest healthy remote target first (--cloud-gpu)"
        if options.local_audio:
            return "local targets only (--local-audio)"
        return "cheapest healthy remote target first, local targets last (fallback_to_local)"

    def _order(self, choices: list[Choice], options: RouteOptions, chars: int) -> list[Choice]:
        choices = [self._mark_preferred(c) for c in choices]

        def key(c: Choice) -> tuple[int, float, float]:
            # audio.cloud_gpu.provider (the seed's setting) names the user's preferred target:
            # it goes first when usable; price and then latency order the rest. A list given in
            # code ranks its targets in its order the same way.
            return (
                self._rank(c),
                c.cost.usd,
                self.speeds.latency_key(c.target.name, chars),
            )

        if options.mode != "default":
            return sorted(choices, key=key)
        # fallback_to_local: local targets go last whatever they cost, because "free" local CPU
        # generation is far slower than any paid GPU.
        remote = sorted((c for c in choices if c.remote), key=key)
        local = sorted((c for c in choices if not c.remote), key=key)
        return remote + local

    def _preferred(self, choice: Choice) -> bool:
        if self.preference:
            return choice.target.name in self.preference
        wanted = self.cloud.provider
        return bool(wanted) and wanted in (choice.target.name, choice.target.kind)

    def _rank(self, choice: Choice) -> int:
        """0, 1, ... for the preferred targets in the user's order; after them, the rest."""
        if not self._preferred(choice):
            return len(self.preference) or 1
        return self.preference.index(choice.target.name) if self.preference else 0

    def _mark_preferred(self, choice: Choice) -> Choice:
        if not self._preferred(choice):
            return choice
        preferred = PREFERRED_NOTE
        if self.preference:
            preferred = LISTED_NOTE.format(rank=self._rank(choice) + 1)
        note = f"{preferred}; {choice.note}" if choice.note else preferred
        return attrs.evolve(choice, note=note)

    @staticmethod
    def _none_message(options: RouteOptions, rejected: list[Rejection]) -> str:
        what = "remote target" if options.cloud_gpu else "target"
        if options.local_audio:
            what = "local target"
        if not rejected:
            return (
                f"no usable {what}: no targets are configured; "
                "add a providers: block to csm-offload.yaml"
            )
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in rejected)
        return f"no usable {what} ({options.mode}): {reasons}"
