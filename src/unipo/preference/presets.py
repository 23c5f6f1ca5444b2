"""Preference presets: name → (loss with its defaults, optional data ordering, paper).

A preset is a frozen composition like ``unipo.algorithms``'s: swap a parameter with
``preset.with_params(loss={"beta": 0.05})``. Names are resolved here only (config / CLI edge).
The trainer reads the parts' attributes (``needs_reference``, ``listwise``, ...), never names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from unipo.preference.losses import CDPO, DPO, FDPO, IPO, ORPO, RobustDPO, SimPO
from unipo.preference.losses_pg import CoPG
from unipo.preference.losses_t2 import CPL, INPO, SPO, SPPO, XPO, LiPOLambda, SparsePO
from unipo.preference.opa import OPAPairing
from unipo.preference.pairs import CurriculumOrdering

# RL presets (``unipo.algorithms.presets_pref``) that carry preference papers' methods: they sample
# on-policy and read rewards, π_old and a critic, so they run in the RL trainer (``unipo train``);
# ``unipo preference --presets`` lists them too
RL_PRESETS = ("p3o", "rto", "f_dpg_kl", "f_dpg_rkl", "f_dpg_tv", "f_dpg_js")


@dataclass(frozen=True)
class PreferencePreset:
    """A named preference method: its loss, an optional data ordering, the paper and its defaults."""

    name: str
    paper: str
    loss: Any
    ordering: Any = None  # callable examples -> stages (Curry-DPO), None: one shuffled stage
    pairing: Any = None  # on-policy pair builder replacing pairs.strategy (OPA-DPO's corrections)
    notes: str = ""
    source: str = ""  # what the final form follows (paper equation, repository@commit path:function)
    deviations: tuple[str, ...] | None = None  # ways it departs from the source; () = none, None = unstated

    def parts(self) -> Iterator[Any]:
        yield self.loss
        if self.ordering is not None:
            yield self.ordering
        if self.pairing is not None:
            yield self.pairing

    def any_part(self, attribute: str) -> bool:
        return any(bool(getattr(p, attribute, False)) for p in self.parts())

    @property
    def needs_reference_model(self) -> bool:
        """A π_ref copy must exist: for log-probs, reference samples, or an iterated reference."""
        return self.any_part("needs_reference") or self.any_part("needs_reference_samples")

    @property
    def needs_lists(self) -> bool:
        """On-policy data must come as ranked lists (listwise loss, or an ordering that pairs them)."""
        return self.any_part("listwise") or self.any_part("needs_lists")

    def with_params(
        self,
        loss: dict[str, Any] | None = None,
        ordering: dict[str, Any] | None = None,
        pairing: dict[str, Any] | None = None,
    ) -> PreferencePreset:
        """This preset with loss / ordering / pairing parameters replaced (unknown names are errors)."""
        changes: dict[str, Any] = {}
        for attr, params in (("loss", loss), ("ordering", ordering), ("pairing", pairing)):
            part = getattr(self, attr)
            if not params:
                continue
            if part is None:
                raise ValueError(f"preset {self.name!r} has no {attr} to set {sorted(params)} on")
            allowed = {f.name for f in dataclasses.fields(part) if not f.name.startswith("_")}
            bad = set(params) - allowed
            if bad:
                raise ValueError(
                    f"preset {self.name!r}: unknown {attr} parameters {sorted(bad)}; "
                    f"allowed: {sorted(allowed)}"
                )
            changes[attr] = dataclasses.replace(part, **params)
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """Name, loss and ordering with their parameters, paper, notes, source and deviations."""

        def one(p: Any) -> str:
            params = ", ".join(
                f"{f.name}={getattr(p, f.name)!r}"
                for f in dataclasses.fields(p)
                if not f.name.startswith("_")
            )
            return f"{getattr(p, 'loss_name', type(p).__name__)}({params})"

        out: dict[str, Any] = {
            "name": self.name, "loss": one(self.loss), "paper": self.paper, "notes": self.notes,
            "source": self.source,
            "deviations": list(self.deviations) if self.deviations is not None else None,
        }  # fmt: skip
        if self.ordering is not None:
            out["ordering"] = one(self.ordering)
        if self.pairing is not None:
            out["pairing"] = one(self.pairing)
        return out


PRESETS: dict[str, PreferencePreset] = {}


def _add(*presets: PreferencePreset) -> None:
    for p in presets:
        if p.name in PRESETS:
            raise ValueError(f"preference preset {p.name!r} registered twice")
        PRESETS[p.name] = p


_F = "Wang et al. 2023, Beyond Reverse KL (f-DPO), arXiv:2309.16240"
# what each source names was read at these commits
_TRL = "huggingface/trl@f2cd5771"
_DPO_LOSS = f"{_TRL} trl/trainer/dpo_trainer.py:_compute_loss"
_FDPO = "alecwangcq/f-divergence-dpo@07d9369f trainers.py"
_SPPO = "uclaml/SPPO@5e61c4e9"
_EXP_CLAMP = "exp(·) exponents are clamped at 80 (as TRL); the authors' code does not clamp."
_add(
    PreferencePreset(
        "dpo", "Rafailov et al. 2023, DPO, arXiv:2305.18290", DPO(0.1),
        source=f"{_DPO_LOSS} (loss_type sigmoid, f_divergence_type reverse_kl); trl/trainer/dpo_config.py "
        "(beta 0.1)",
        deviations=(),
    ),
    PreferencePreset(
        "cdpo", "Mitchell 2023, cDPO note (label-smoothed DPO)", CDPO(0.1, eps=0.1),
        notes="ε = 0.1 is ours; biased towards h = 0, see robust_dpo",
        source=f"{_SPPO} sppo/trainer.py (loss_type sigmoid with label_smoothing); princeton-nlp/SimPO@"
        "1b3e8f35 scripts/simpo_trainer.py:simpo_loss (the same smoothing)",
        deviations=(),
    ),
    PreferencePreset(
        "robust_dpo", "Chowdhury et al. 2024, Provably Robust DPO, arXiv:2403.00409",
        RobustDPO(0.1, eps=0.1), notes="ε = label-flip probability; TRL suggests 0.1",
        source=f"{_DPO_LOSS} (loss_type robust)",
        deviations=(),
    ),
    PreferencePreset(
        "ipo", "Azar et al. 2023, A General Theoretical Paradigm (IPO), arXiv:2310.12036", IPO(0.1),
        notes="paper convention: per-sequence (summed) log-ratios",
        source=f"arXiv:2310.12036 Eq. 17 as cited in {_SPPO} sppo/trainer.py (loss_type ipo: (h − 1/(2β))² "
        "on summed log-ratios) and in TRL's ipo loss",
        deviations=(),
    ),
    PreferencePreset(
        "ipo_mean", "Azar et al. 2023 (IPO), TRL's ipo loss", IPO(0.1, length_normalized=True),
        notes="TRL convention: log-ratios averaged over each response's tokens",
        source=f"{_DPO_LOSS} (loss_type ipo: log-ratios divided by the completion length)",
        deviations=(),
    ),
    PreferencePreset(
        "f_dpo_reverse_kl", _F, FDPO(0.1, "reverse_kl"), notes="identical to dpo",
        source=f"{_FDPO} (reverse_kl = DPO's preference_loss); {_DPO_LOSS} (f_divergence_type reverse_kl)",
        deviations=(),
    ),
    PreferencePreset(
        "f_dpo_forward_kl", _F, FDPO(0.1, "forward_kl"),
        source=f"{_FDPO}:forward_dpo_loss (f′ = −e^(−ρ)); {_DPO_LOSS} (forward_kl)",
        deviations=(_EXP_CLAMP,),
    ),
    PreferencePreset(
        "f_dpo_js", _F, FDPO(0.1, "js"),
        source=f"{_FDPO}:js_dpo_loss (log 2 − log(1 + e^(−ρ)), the same as log σ(ρ) up to a constant that "
        f"cancels); {_DPO_LOSS} (js_divergence)",
        deviations=(),
    ),
    PreferencePreset(
        "f_dpo_alpha", _F, FDPO(0.1, "alpha", alpha=0.5),
        notes="the paper's α (TRL's coefficient a = 1 − α); the authors' scripts use 0.3, 0.5 and 0.7",
        source=f"{_FDPO}:alpha_dpo_loss (f′ = −e^(−αρ)/α, α ∈ (0, 1)); {_DPO_LOSS} (alpha_divergence, "
        "a = 1 − α)",
        deviations=(_EXP_CLAMP,),
    ),
    PreferencePreset(
        "simpo", "Meng et al. 2024, SimPO, arXiv:2405.14734", SimPO(2.0, 0.25),
        notes="no reference model; β = 2.0, γ/β = 0.25 (authors' config)",
        source="princeton-nlp/SimPO@1b3e8f35 scripts/simpo_trainer.py:simpo_loss (sigmoid, mean token "
        "log-probs), scripts/simpo_config.py (beta 2.0, gamma_beta_ratio 0.25)",
        deviations=(),
    ),
    PreferencePreset(
        "orpo", "Hong et al. 2024, ORPO, arXiv:2403.07691", ORPO(0.1),
        notes="no reference model; λ = 0.1 (Mistral-ORPO-β script, TRL)",
        source="xfactlab/orpo@208d2d64 src/orpo_trainer.py: compute_logps, compute_loss; "
        f"scripts/run_mistral_orpo_beta.sh (--alpha 0.1); {_TRL} trl/experimental/orpo/orpo_config.py",
        deviations=(
            "The NLL term is each example's mean over its chosen tokens; the authors' trainer takes the "
            "model's loss, a mean over every label token of the batch.",
            "The mean log-prob is clamped at −1e−6 so that log(1 − p) stays finite; the authors' code does "
            "not clamp.",
        ),
    ),
    PreferencePreset(
        "sppo", "Wu et al. 2024, Self-Play Preference Optimization, arXiv:2405.00675", SPPO(0.001),
        notes="reference = previous round's policy; paper: K = 5, 3 iterations, RMSprop lr 5e-7",
        source=f"{_SPPO} sppo/trainer.py (loss_type sppo), scripts/pipeline.sh (beta 0.001, rmsprop, lr "
        "5e-7), run_sppo_mistral.sh (3 iterations)",
        deviations=(
            "Win rates P̂ come from the group's own scores (pairs.win_rates: 0/1 verifier comparisons, or "
            "σ(s_i − s_j) of reward-model scores); the SPPO code scores pairs with PairRM.",
        ),
    ),
    PreferencePreset(
        "inpo", "Zhang et al. 2024, Iterative Nash Policy Optimization, arXiv:2407.00617",
        INPO(0.1, tau=0.01),
        notes="reference = previous round's policy, anchor = initial model; β, τ ours (UNVERIFIED)",
        source="derived from the online-mirror-descent target in the abstract of arXiv:2407.00617 and "
        "checked against a third-party re-implementation (shared FORMULAS-preference.md); the paper's "
        "equation and the authors' code were not read",
        deviations=(
            "The loss is our derivation, not the paper's equation read off the page: any difference from "
            "it is unknown.",
        ),
    ),
    PreferencePreset(
        "xpo", "Xie et al. 2024, Exploratory Preference Optimization, arXiv:2405.21046",
        XPO(0.1, alpha=1e-5), notes="online: each pair = one policy and one reference sample",
        source=f"{_TRL} trl/experimental/xpo/xpo_trainer.py:_compute_losses (sigmoid + α·log π_θ(ỹ_ref)), "
        "xpo_config.py (alpha 1e-5)",
        deviations=(
            "Pairs without a reference sample (offline data) get no exploration term; TRL always pairs one "
            "policy and one reference completion.",
        ),
    ),
    PreferencePreset(
        "lipo", "Liu et al. 2024, LiPO: Listwise Preference Optimization, arXiv:2402.01878",
        LiPOLambda(0.1), notes="listwise (ranked lists of K responses); β is ours",
        source="a secondary summary of arXiv:2402.01878 (LambdaLoss form, shared FORMULAS-preference.md); "
        "the paper's equation and the authors' code were not read",
        deviations=(
            "The discount is D(τ) = ln(1 + τ); a log₂ discount (NDCG's) would rescale every Δ_ij by the "
            "same factor.",
        ),
    ),
    PreferencePreset(
        "curry_dpo", "Pattnaik et al. 2024, Curry-DPO, arXiv:2403.07230", DPO(0.1),
        ordering=CurriculumOrdering(3),
        notes="DPO over curriculum stages, largest score gap first; reference = previous stage",
        source="arXiv:2403.07230v2 abstract and Fig. 1 (pairs (R1, R4), (R1, R3), (R1, R2) by rating gap, "
        "the model of iteration i is the reference of i + 1), read through the arXiv HTML and a review "
        "(liner.com); no authors' code was found",
        deviations=(
            "Only the rating-gap ordering is implemented; the paper also orders pairs by other criteria.",
            "Data that comes only as pairs is sorted by score gap and cut into max_stages equal stages; "
            "the paper builds its stages from ranked lists of 4 responses.",
        ),
    ),
    PreferencePreset(
        "sparse_po", "Christopoulou et al. 2024, SparsePO, arXiv:2410.05102", SparsePO(0.1),
        notes="the activation-mask variant (see the loss docstring); β = 0.1 (authors' config)",
        source="huawei-noah/HEBO@04f4ece8 SparsePO/src/trainers/mapo_trainer.py (MAPOTrainer: masks from "
        "the reference model's activations, zn_rescale), as read for unipo.preference.losses_t2.SparsePO",
        deviations=(
            "Masks read only the residual stream (output_hidden_states); the authors also hook MLP and "
            "attention internals and the logits.",
            "No masked sequence-KL term: it needs full-vocabulary reference distributions at every token, "
            "which the chunked log-prob pass does not keep.",
        ),
    ),
    PreferencePreset(
        "cpl", "Hejna et al. 2023, Contrastive Preference Learning, arXiv:2310.13639",
        CPL(0.1, lam=0.5), notes="no reference model; α = 0.1, λ = 0.5 (authors' defaults)",
        source="jhejna/cpl@b333667b research/algs/cpl.py: biased_bce_with_logits, CPL._get_cpl_loss "
        "(A = α·Σ log π, no discount); configs/mw_image_dense/cpl.yaml (alpha 0.1, contrastive_bias 0.5)",
        deviations=(),
    ),
    PreferencePreset(
        "spo", "Li et al. 2024, Self-supervised Preference Optimization, arXiv:2409.17791 (EMNLP Findings)",
        SPO(0.1, lam=0.1, removals=2),
        notes="DPO + λ·preference-degree loss on RAKE key-content-removed copies; λ = 0.1 and V = 2 are "
        "ours (UNVERIFIED)",
        source="the abstract of arXiv:2409.17791 (ACL Anthology 2024.findings-emnlp.845) and a third-party "
        "review (themoonlight.io: RAKE key content removed, self-supervised classification); the paper's "
        "method section and the authors' code (github.com/lijian16/SPO) were not seen",
        deviations=(
            "The degree classifier scores the copies by the policy's implicit rewards (a Plackett–Luce "
            "ranking, no extra parameters); the authors may train a classification head.",
            "Degree labels are the number of key phrases removed; the term is applied to the chosen and "
            "the rejected response and summed.",
        ),
    ),
    PreferencePreset(
        "copg", "Flet-Berliac et al. 2024, Contrastive Policy Gradient (CoPG), arXiv:2406.19185 (EMNLP)",
        CoPG(0.06),
        notes="off-policy: any pairs of scored responses (offline data with score columns, or on-policy "
        "rounds); β = 0.06, the paper's best (IPO's was 0.01, DPO's 0.1); lr 1e-6, batch 128, 2 epochs",
        source="arXiv:2406.19185 Eq. 7–9 (sample loss ℓ_CoPG), Eq. 17 (empirical loss), Eq. 18–19 "
        "(gradient), Prop. 3 (IPO at R = ±1/4), §6 (β sweep; 0.06 best); no authors' code found",
        deviations=(
            "On-policy pairs drop tied scores (pairs.strategy), which CoPG could learn from (ΔR = 0 pulls "
            "Δρ towards 0); the paper trains on a fixed offline set of pairs.",
            "Offline pairs without score columns get scores 1/0 (data.py): ΔR = 1, and CoPG is then IPO with "
            "target 1/(2τ) = 1/β; the paper scores every response with a reward model.",
        ),
    ),
    PreferencePreset(
        "opa_dpo",
        "Yang et al. 2025, Mitigating Hallucinations in LVLMs via DPO: On-Policy Data Hold the Key "
        "(OPA-DPO), arXiv:2501.09695 (CVPR)",
        DPO(0.1), pairing=OPAPairing(),
        notes="on-policy only: each sample y is corrected (verifier edit of its final answer, or a local "
        "model: loss.pairing={corrector: model, corrector_path: DIR}); pairs (ŷ ≻ y) and (ground truth ≻ "
        "y); 2 SFT epochs on the preferred responses (OPA), then π_ref ← π_θ and DPO β = 0.1; authors: "
        "4.8k samples, DPO lr 1e-6 × 4 epochs after OPA (LoRA r 256, lr 2e-4, 2 epochs)",
        source="zhyang2226/OPA-DPO@db90180ebcbdd2199f4eb643af32238dbc73b6fe base_operations/"
        "make_opadpo_dataset.py, opadpo/dpo_models/dpo_trainer.py:DPOTrainer.compute_policy_loss "
        "(losses1 standard ≻ original, losses2 AI_pseudo ≻ original), make_models (reference = the OPA "
        "model), run/train_opa.sh, run/train_opa_dpo.sh; arXiv:2501.09695 Fig. 1(d)",
        deviations=(
            "The corrector is a verifier-guided edit or a local model; the authors ask GPT-4V for minimal "
            "sentence-level rewrites of the hallucinations.",
            "No token weights from the corrector's report (response_score) and no image-masking (CoPO) or "
            "anchor (AncPO) terms: they are specific to vision-language models.",
            "The OPA step is SFT with the preference optimizer and learning rate, on the full model or its "
            "LoRA; the authors train a separate LoRA at lr 2e-4.",
            "OPA and DPO repeat every on-policy round; the authors collect once and train once.",
        ),
    ),
)  # fmt: skip


def get_preset(name: str) -> PreferencePreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preference preset {name!r}; allowed: {', '.join(sorted(PRESETS))}"
        ) from None


def list_presets() -> list[PreferencePreset]:
    return [PRESETS[k] for k in sorted(PRESETS)]
