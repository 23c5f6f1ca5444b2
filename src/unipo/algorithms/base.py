"""An algorithm is a frozen preset of parts; ``policy_loss`` is the one place they meet."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from unipo.parts.base import (
    Advantage,
    Aggregate,
    ExtraRollout,
    LossInputs,
    Metrics,
    Regularizer,
    Selection,
    Surrogate,
    TokenWeight,
    masked_mean,
    scalar,
)
from unipo.parts.registry import part_name

if TYPE_CHECKING:
    from unipo.batch import RolloutBatch


@dataclass(frozen=True)
class Algorithm:
    """A named composition of parts. Swap one with ``dataclasses.replace(algo, aggregate=...)``."""

    name: str
    paper: str
    advantage: Advantage
    surrogate: Surrogate
    aggregate: Aggregate
    selections: tuple[Selection, ...] = ()
    token_weights: tuple[TokenWeight, ...] = ()
    regularizers: tuple[Regularizer, ...] = ()
    rewards: tuple[Any, ...] = ()  # reward-shaping terms added to the task reward (RewardFn)
    corrections: tuple[Any, ...] = ()  # rollout–trainer mismatch corrections (parts/corrections.py)
    notes: str = ""  # defaults the paper uses beyond the parts (G, lr, temperature, ...)
    # provenance: what the final form follows ("arXiv 2503.14476 Eq. 8", "owner/repo@commit
    # path:function"), and every way this preset departs from it, as plain sentences; () states
    # "no deviation", None means "not stated" (tests/test_provenance.py rejects it)
    source: str = ""
    deviations: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for part in self.parts():
            check = getattr(part, "check", None)
            if check is not None and (why := check(self)):
                raise ValueError(f"algorithm {self.name!r}: {part_name(part)} cannot be used here: {why}")

    def parts(self) -> Iterator[Any]:
        yield self.advantage
        yield from self.selections
        yield from self.token_weights
        yield self.surrogate
        yield from self.regularizers
        yield self.aggregate
        yield from self.rewards
        yield from self.corrections

    def any_part(self, attribute: str) -> bool:
        return any(bool(getattr(p, attribute, False)) for p in self.parts())

    @property
    def needs_reference(self) -> bool:
        return self.any_part("needs_reference")

    @property
    def needs_entropy_grad(self) -> bool:
        return self.any_part("needs_entropy_grad")

    @property
    def needs_demonstrations(self) -> bool:
        """Some part (HPT's switch) reads ``metadata["sft_target_ids"]``: the task's demonstration
        tokens (answer + EOS), which the collect step then fills for every row."""
        return self.any_part("needs_demonstrations")

    def _stat_names(self, attribute: str) -> tuple[str, ...]:
        return tuple(sorted({name for p in self.parts() for name in getattr(p, attribute, ())}))

    @property
    def token_stats(self) -> tuple[str, ...]:
        """Per-token statistics of π_θ that some part reads (``LossInputs.stats``), sorted."""
        return self._stat_names("token_stats")

    @property
    def old_token_stats(self) -> tuple[str, ...]:
        """Per-token statistics of π_old that some part reads (``LossInputs.old_stats``), sorted."""
        return self._stat_names("old_token_stats")

    @property
    def row_flags(self) -> tuple[str, ...]:
        """Metadata keys of row subsets some part reads (``LossInputs.row_flags``), sorted."""
        return self._stat_names("row_flags")

    def extra_rollout(self, metrics: dict[str, Any]) -> ExtraRollout | None:
        """The extra rollout a part asks for next step (AEPO), or None; ``metrics`` as for
        ``sampling_temperature``. Two parts asking for one is an error (collect draws one)."""
        asked = [
            (part_name(p), r)
            for p in self.parts()
            if (hook := getattr(p, "extra_rollout", None)) is not None and (r := hook(metrics)) is not None
        ]
        if len(asked) > 1:
            names = [n for n, _ in asked]
            raise ValueError(f"algorithm {self.name!r}: several parts ask for an extra rollout {names}")
        return asked[0][1] if asked else None

    def sampling_temperature(self, metrics: dict[str, Any]) -> float | None:
        """The rollout temperature parts ask for next step (None: keep the configured one).

        ``metrics`` are the previous step's metrics ({} before the first step). Two parts
        asking for different temperatures is an error rather than a silent choice.
        """
        asked = {
            part_name(p): t
            for p in self.parts()
            if (hook := getattr(p, "sampling_temperature", None)) is not None
            and (t := hook(metrics)) is not None
        }
        if len(set(asked.values())) > 1:
            raise ValueError(f"algorithm {self.name!r}: parts ask for different rollout temperatures {asked}")
        return next(iter(asked.values()), None)

    def token_temperature_fn(self, base_temperature: float) -> Callable[[Tensor], Tensor] | None:
        """The per-token rollout temperature rule of the part that has one, bound to T₀.

        A part's ``token_temperature(entropy [N], base_temperature) -> temperature [N]`` (HAPO's
        adaptive temperature sampling) becomes ``entropy -> temperature``, the shape of
        ``SamplingParams.token_temperature``; a part switches it off with a false
        ``adaptive_temperature`` attribute. None when no part has an active rule; two parts
        with one is an error (their rules would not compose).
        """
        parts = [
            p
            for p in self.parts()
            if callable(getattr(p, "token_temperature", None)) and getattr(p, "adaptive_temperature", True)
        ]
        if len(parts) > 1:
            names = [part_name(p) for p in parts]
            raise ValueError(f"algorithm {self.name!r}: several parts set per-token temperatures {names}")
        if not parts:
            return None
        rule = parts[0].token_temperature

        def token_temperature(entropy: Tensor) -> Tensor:  # [N] → [N]
            return rule(entropy, base_temperature)

        return token_temperature

    def prepare(
        self, batch: RolloutBatch, score: Callable[[torch.nn.Module], Tensor]
    ) -> tuple[RolloutBatch, Metrics]:
        """Every part's ``prepare(batch, score)`` hook in part order (RTO's frozen DPO model scores the
        batch): the batch they fill and their metrics; the batch unchanged when no part has one."""
        metrics: Metrics = {}
        for part in self.parts():
            hook = getattr(part, "prepare", None)
            if hook is not None:
                batch, more = hook(batch, score)
                metrics.update(more)
        return batch, metrics

    def replace(self, **changes: Any) -> Algorithm:
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------- part state
    def _stateful(self) -> Iterator[tuple[str, Any]]:
        for i, part in enumerate(self.parts()):
            if hasattr(part, "state_dict"):
                yield f"{i}:{part_name(part)}", part

    def state_dict(self) -> dict[str, Any]:
        return {key: part.state_dict() for key, part in self._stateful()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, part in self._stateful():
            if key in state:
                part.load_state_dict(state[key])

    def on_step_end(self, metrics: dict[str, float]) -> None:
        for part in self.parts():
            hook = getattr(part, "on_step_end", None)
            if hook is not None:
                hook(metrics)

    def describe(self) -> dict[str, Any]:
        """Name, paper and every part with its parameters (what ``unipo algorithms`` prints)."""

        def one(p: Any) -> str:
            params = (
                ", ".join(
                    f"{f.name}={getattr(p, f.name)!r}"
                    for f in dataclasses.fields(p)
                    if not f.name.startswith("_")
                )
                if dataclasses.is_dataclass(p)
                else ""
            )
            return f"{part_name(p)}({params})"

        return {
            "name": self.name,
            "paper": self.paper,
            "advantage": one(self.advantage),
            "selections": [one(p) for p in self.selections],
            "token_weights": [one(p) for p in self.token_weights],
            "surrogate": one(self.surrogate),
            "regularizers": [one(p) for p in self.regularizers],
            "aggregate": one(self.aggregate),
            "rewards": [one(p) for p in self.rewards],
            **({"corrections": [one(p) for p in self.corrections]} if self.corrections else {}),
            "notes": self.notes,
            "source": self.source,
            "deviations": list(self.deviations) if self.deviations is not None else None,
        }


def policy_loss(algorithm: Algorithm, x: LossInputs) -> tuple[Tensor, Metrics]:
    """The policy-gradient core: token weights × surrogate + regularizers, then aggregation.

        ℓ_{i,t} = w_{i,t} · surrogate_{i,t} + Σ_k reg^k_{i,t}        L = aggregate(ℓ, mask) + Σ_j R^j

    where w is the product of every TokenWeight part and of ``x.correction_weights`` (the rollout
    corrections' importance weights; 1 when there are none) and R^j the 0-dim terms of regularizers
    marked ``aggregated`` (``parts/base.py``). Returns the scalar loss and the metrics of every part.
    Padding never enters: the parts see ``x.without_padding()`` (every [B, T] input selected to 0
    where the mask is 0), and the aggregates and ``masked_mean`` select rather than multiply, so
    NaN/±inf under padding change neither the loss nor its (finite) gradient.
    """
    x = x.without_padding()
    metrics: Metrics = {}
    weight = torch.ones_like(x.logprobs)  # [B, T]
    if x.correction_weights is not None:
        weight = weight * x.correction_weights.detach().to(weight.dtype)
    for part in algorithm.token_weights:
        w, m = part(x)
        weight = weight * w.detach()
        metrics.update(m)
    pg, m = algorithm.surrogate(x)  # [B, T]
    metrics.update(m)
    token_loss = weight * pg
    batch_terms = torch.zeros((), device=pg.device, dtype=pg.dtype)
    for part in algorithm.regularizers:
        r, m = part(x)
        if getattr(part, "aggregated", False):
            batch_terms = batch_terms + r  # 0-dim, already this micro-batch's share of the loss
        else:
            token_loss = token_loss + r
        metrics.update(m)
    loss = algorithm.aggregate(token_loss, x) + batch_terms
    metrics["loss/policy"] = scalar(algorithm.aggregate(weight * pg, x))
    metrics["policy/ratio_mean"] = scalar(masked_mean(x.ratio.detach(), x.mask))
    metrics["policy/approx_kl_old"] = scalar(masked_mean((x.ratio - 1 - x.log_ratio).detach(), x.mask))
    if algorithm.token_weights:
        metrics["token_weight/active_frac"] = scalar(masked_mean((weight > 0).float(), x.mask))
    return loss, metrics
