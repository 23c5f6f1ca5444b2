"""Preference losses with one signature: ``loss(x: PreferenceInputs) -> (per-example loss [N], metrics)``.

Every loss is a frozen dataclass registered by name in ``PREFERENCE_LOSSES``; its docstring gives
the formula and the source followed. Notation (``FORMULAS-preference.md``):

    σ = sigmoid;  log π(y) = Σ_t log π(y_t | x, y_<t)  (a sum over the response's tokens)
    ρ(y) = log π_θ(y) − log π_ref(y)       h = ρ(y_w) − ρ(y_l)       (w = chosen, l = rejected)

Attributes a loss declares (class-level, read by the trainer; never the loss's name):
    needs_reference              π_ref per-token log-probs must be in the inputs
    listwise                     takes K ≥ 2 ranked responses (else pairs, K = 2)
    needs_reference_samples      on-policy data must include samples drawn from π_ref (XPO)
    iterative_reference_update   π_ref ← π_θ at the start of every round/stage (SPPO, INPO)
    needs_anchor                 also needs log-probs of the *initial* model (INPO)
    needs_reference_activations  needs token masks from π_ref's hidden activations (SparsePO)
    response_variants            V > 0: each response also comes with V key-content-removed variants
                                 whose sequence log-probs are in the inputs (SPO; ``variants.py``)

This file holds the T1 losses (DPO, cDPO, robust DPO, IPO, f-DPO, SimPO, ORPO); the seed papers'
variants are in ``losses_t2.py`` and, for losses that read the responses' scores, ``losses_pg.py``.
Metrics: ``pref/chosen_reward``, ``pref/rejected_reward``, ``pref/margin``, ``pref/reward_accuracy``
(the share of examples whose best response gets a higher implicit reward than the worst: pair-ranking
accuracy, TRL's ``rewards/accuracies``; not a task accuracy, which the evaluation reports as
``eval/accuracy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from unipo.parts.base import scalar

Metrics = dict[str, Any]
PREFERENCE_LOSSES: dict[str, type] = {}
MAX_EXP = 80.0  # exponent clamp for f-DPO's exp(·) terms (TRL uses 80 in fp32/bf16)

T = TypeVar("T", bound=type)


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator: make a preference loss constructible by ``name`` from config."""

    def deco(cls: T) -> T:
        if name in PREFERENCE_LOSSES and PREFERENCE_LOSSES[name] is not cls:
            raise ValueError(f"preference loss {name!r} registered twice")
        PREFERENCE_LOSSES[name] = cls
        cls.loss_name = name  # type: ignore[attr-defined]
        return cls

    return deco


@runtime_checkable
class PreferenceLoss(Protocol):
    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]: ...


@dataclass
class PreferenceInputs:
    """What a preference loss may read for N examples of K responses × T tokens (best first)."""

    logprobs: Tensor  # [N, K, T] log π_θ per response token, requires grad, 0 on padding
    mask: Tensor  # [N, K, T] float, 1 on response tokens
    ref_logprobs: Tensor | None = None  # [N, K, T] log π_ref (iterative losses: the previous iterate)
    anchor_logprobs: Tensor | None = None  # [N, K, T] log π_ref0 of the initial model (INPO)
    valid: Tensor | None = None  # [N, K] bool, False on list padding (None: all valid)
    scores: Tensor | None = None  # [N, K] float, non-increasing over valid entries
    win_prob: Tensor | None = None  # [N, K] estimated win rate P̂(y_k ≻ π_t) (SPPO)
    from_reference: Tensor | None = None  # [N, K] bool, response was sampled from π_ref (XPO)
    ref_weights: Tensor | None = None  # [N, K, T] token masks in [0, 1] from π_ref (SparsePO)
    variant_logps: Tensor | None = None  # [N, K, V] Σ_t log π_θ of response k, v+1 key contents removed
    variant_ref_logps: Tensor | None = None  # [N, K, V] Σ_t log π_ref of the same variants
    variant_valid: Tensor | None = None  # [N, K, V] bool, False where response k has ≤ v key contents

    def __post_init__(self) -> None:
        if self.valid is None:
            self.valid = torch.ones(self.mask.shape[:2], dtype=torch.bool, device=self.mask.device)

    @property
    def logps(self) -> Tensor:  # [N, K] Σ_t log π_θ(y_t)
        return (self.logprobs * self.mask).sum(-1)

    @property
    def lengths(self) -> Tensor:  # [N, K] response lengths |y| (≥ 1)
        return self.mask.sum(-1).clamp(min=1)

    def require(self, name: str, loss: str) -> Tensor:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"preference loss {loss!r} needs inputs.{name}, which is None")
        return value

    @property
    def ref_logps(self) -> Tensor:  # [N, K] Σ_t log π_ref(y_t)
        return (self.require("ref_logprobs", "reference-based") * self.mask).sum(-1)

    @property
    def log_ratios(self) -> Tensor:  # [N, K] ρ(y) = log π_θ(y) − log π_ref(y)
        return self.logps - self.ref_logps

    def pair(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(chosen [N], rejected [N]) of a [N, 2, ...] tensor; pairwise losses need K = 2."""
        if v.shape[1] != 2:
            raise ValueError(
                f"this loss is pairwise and needs K=2 responses per example, got K={v.shape[1]}; "
                "expand ranked lists into pairs first (data.list_pairs / pairs.strategy)"
            )
        return v[:, 0], v[:, 1]


def reward_metrics(chosen: Tensor, rejected: Tensor) -> Metrics:
    """Implicit-reward metrics of the chosen [N] vs rejected [N] responses (no grad)."""
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    return {
        "pref/chosen_reward": scalar(chosen.mean()),
        "pref/rejected_reward": scalar(rejected.mean()),
        "pref/margin": scalar((chosen - rejected).mean()),
        "pref/reward_accuracy": scalar((chosen > rejected).float().mean()),
    }


# ------------------------------------------------------------------ DPO and label noise
@register_loss("dpo")
@dataclass(frozen=True)
class DPO:
    """DPO, sigmoid loss (Rafailov et al. 2023, arXiv:2305.18290).

        L = −log σ(β·h)

    Source: TRL ``dpo_trainer.py`` ``sigmoid``; default β = 0.1 (``DPOConfig``). f-DPO with the
    reverse KL divergence is exactly this loss.
    """

    beta: float = 0.1
    needs_reference: ClassVar[bool] = True

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        rw, rl = x.pair(x.log_ratios)  # [N], [N]
        loss = -F.logsigmoid(self.beta * (rw - rl))
        return loss, reward_metrics(self.beta * rw, self.beta * rl)


@register_loss("cdpo")
@dataclass(frozen=True)
class CDPO:
    """Conservative DPO: binary cross-entropy with label smoothing ε (Mitchell 2023, "A note on DPO
    with noisy preferences"; the cDPO report).

        L = −(1−ε)·log σ(β·h) − ε·log σ(−β·h)

    Source: the ``sigmoid`` loss with ``label_smoothing`` of the SPPO and SimPO trainers and of TRL
    before it moved label smoothing out of ``sigmoid``. Biased towards h = 0 (a finite optimum
    β·h* = log((1−ε)/ε)); contrast ``RobustDPO``. ε = 0.1 is our default (no paper value found).
    """

    beta: float = 0.1
    eps: float = 0.1
    needs_reference: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 0.5:
            raise ValueError(f"cdpo: eps must be in [0, 0.5), got {self.eps}")

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        rw, rl = x.pair(x.log_ratios)
        z = self.beta * (rw - rl)
        loss = -(1 - self.eps) * F.logsigmoid(z) - self.eps * F.logsigmoid(-z)
        return loss, reward_metrics(self.beta * rw, self.beta * rl)


@register_loss("robust_dpo")
@dataclass(frozen=True)
class RobustDPO:
    """Robust DPO (Chowdhury et al. 2024, arXiv:2403.00409): an unbiased loss under labels flipped
    with probability ε ∈ [0, 0.5).

        L = [ −(1−ε)·log σ(β·h) + ε·log σ(−β·h) ] / (1 − 2ε)

    Source: TRL ``robust`` loss (its docstring suggests ε = 0.1; TRL's default is 0). Note the
    *plus* sign on the ε term and the 1/(1−2ε) factor: unlike cDPO, in expectation over flipped
    labels it equals the clean DPO loss.
    """

    beta: float = 0.1
    eps: float = 0.1
    needs_reference: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 0.5:
            raise ValueError(f"robust_dpo: eps must be in [0, 0.5), got {self.eps}")

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        rw, rl = x.pair(x.log_ratios)
        z = self.beta * (rw - rl)
        loss = (-(1 - self.eps) * F.logsigmoid(z) + self.eps * F.logsigmoid(-z)) / (1 - 2 * self.eps)
        return loss, reward_metrics(self.beta * rw, self.beta * rl)


@register_loss("ipo")
@dataclass(frozen=True)
class IPO:
    """IPO (Azar et al. 2023, arXiv:2310.12036), β in the role of the paper's τ.

        L = (h − 1/(2β))²

    ``length_normalized=False`` (default): h uses the paper's per-sequence log-ratios (token sums).
    ``length_normalized=True``: TRL's ``ipo``, h = ρ(y_w)/|y_w| − ρ(y_l)/|y_l| (per-token averages;
    TRL's comment says the IPO authors confirmed this matches their reported results). The two
    need very different β: the target 1/(2β) is per sequence in one and per token in the other.
    """

    beta: float = 0.1
    length_normalized: bool = False
    needs_reference: ClassVar[bool] = True

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        rho = x.log_ratios / x.lengths if self.length_normalized else x.log_ratios  # [N, 2]
        rw, rl = x.pair(rho)
        loss = (rw - rl - 1 / (2 * self.beta)) ** 2
        return loss, reward_metrics(self.beta * rw, self.beta * rl)


# ------------------------------------------------------------------ f-DPO
def _exp_neg(v: Tensor) -> Tensor:  # exp(−v) with the exponent clamped at MAX_EXP
    return torch.exp((-v).clamp(max=MAX_EXP))


# f′(u) written on ρ = log u, additive constants dropped (they cancel between y_w and y_l)
F_PRIME: dict[str, Callable[[Tensor, float], Tensor]] = {
    "reverse_kl": lambda rho, a: rho,  # f′(u) = log u + 1
    "forward_kl": lambda rho, a: -_exp_neg(rho),  # f′(u) = −1/u
    "js": lambda rho, a: F.logsigmoid(rho),  # f′(u) = log(2u/(1+u)) = log 2 + log σ(ρ)
    "alpha": lambda rho, a: -_exp_neg(a * rho) / a,  # f′(u) = (1 − u^(−α))/α
}


@register_loss("f_dpo")
@dataclass(frozen=True)
class FDPO:
    """f-DPO (Wang et al. 2023, "Beyond Reverse KL", arXiv:2309.16240).

        L = −log σ( β·f′(u_w) − β·f′(u_l) ),   u = π_θ(y)/π_ref(y) = exp ρ(y)

    f′ per divergence (``F_PRIME``): reverse KL ρ (= DPO); forward KL −e^(−ρ); Jensen–Shannon
    log σ(ρ); α-divergence −e^(−αρ)/α with α ∈ (0, 1). Source: the authors' ``trainers.py``
    (alecwangcq/f-divergence-dpo). α is the *paper's* α; TRL's ``f_alpha_divergence_coef`` a is
    α = 1 − a (the two agree at 0.5, the authors' default). exp(·) exponents are clamped at 80.
    """

    beta: float = 0.1
    divergence: Literal["reverse_kl", "forward_kl", "js", "alpha"] = "reverse_kl"
    alpha: float = 0.5
    needs_reference: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.divergence not in F_PRIME:
            raise ValueError(f"f_dpo: unknown divergence {self.divergence!r}; allowed: {sorted(F_PRIME)}")
        if self.divergence == "alpha" and not 0.0 < self.alpha < 1.0:
            raise ValueError(f"f_dpo: alpha must be in (0, 1), got {self.alpha}")

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        g = F_PRIME[self.divergence](x.log_ratios, self.alpha)  # [N, 2]
        gw, gl = x.pair(g)
        loss = -F.logsigmoid(self.beta * (gw - gl))
        return loss, reward_metrics(self.beta * gw, self.beta * gl)


# ------------------------------------------------------------------ reference-free
def log1mexp(v: Tensor) -> Tensor:
    """log(1 − e^v) for v < 0, accurate near 0 and towards −∞ (Mächler 2012)."""
    return torch.where(v > -math.log(2), torch.log(-torch.expm1(v)), torch.log1p(-torch.exp(v)))


@register_loss("simpo")
@dataclass(frozen=True)
class SimPO:
    """SimPO (Meng et al. 2024, arXiv:2405.14734): length-normalized, no reference model.

        L = −log σ( β·[log π(y_w)/|y_w| − log π(y_l)/|y_l|] − γ ),   γ = β·gamma_beta_ratio

    Source: princeton-nlp/SimPO ``simpo_trainer.py`` (it takes γ/β as the parameter); defaults
    β = 2.0, γ/β = 0.25 from its config (the README suggests β 2.0–2.5 and trying γ/β = 0.5).
    """

    beta: float = 2.0
    gamma_beta_ratio: float = 0.25
    needs_reference: ClassVar[bool] = False

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        aw, al = x.pair(x.logps / x.lengths)  # mean token log-prob, [N] each
        loss = -F.logsigmoid(self.beta * (aw - al) - self.beta * self.gamma_beta_ratio)
        return loss, reward_metrics(self.beta * aw, self.beta * al)


@register_loss("orpo")
@dataclass(frozen=True)
class ORPO:
    """ORPO (Hong et al. 2024, arXiv:2403.07691): SFT on the chosen response plus an odds-ratio term.

        p(y) = exp( log π(y)/|y| )          odds(y) = p/(1−p)
        L = −log π(y_w)/|y_w| − λ·log σ( log odds(y_w) − log odds(y_l) )

    Source: xfactlab/orpo ``orpo_trainer.py`` (log odds via log1p(−exp(·))); λ = 0.1 as in the
    Mistral-ORPO-β script and TRL (the argparse default is 1.0). The NLL is the per-example mean
    over the chosen tokens (the authors average over all tokens of the batch). The mean log-prob
    is clamped at −1e−6 so that log(1 − p) stays finite.
    """

    lam: float = 0.1
    needs_reference: ClassVar[bool] = False

    def __call__(self, x: PreferenceInputs) -> tuple[Tensor, Metrics]:
        mean_logp = (x.logps / x.lengths).clamp(max=-1e-6)  # [N, 2]
        log_odds = mean_logp - log1mexp(mean_logp)  # log p − log(1 − p)
        ow, ol = x.pair(log_odds)
        mw, ml = x.pair(mean_logp)
        nll = -mw
        loss = nll - self.lam * F.logsigmoid(ow - ol)
        metrics = reward_metrics(self.lam * mw, self.lam * ml)
        metrics.update({"orpo/nll": scalar(nll.mean()), "orpo/log_odds_ratio": scalar((ow - ol).mean())})
        return loss, metrics


def make_loss(name: str, **params: Any) -> Any:
    """The loss registered as ``name`` with ``params`` (clear errors for unknown names/params)."""
    from unipo.preference import losses_pg, losses_t2  # noqa: F401  (registers the T2 losses)

    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; allowed: {', '.join(sorted(PREFERENCE_LOSSES))}")
    try:
        return PREFERENCE_LOSSES[name](**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for preference loss {name!r}: {e}") from None
