"""The differential-information view of preference training: the DID entropy, logged every step.

Won, Lee, Hwang, Seo 2025, "Differential Information" (arXiv:2505.23761): the differential
information distribution (DID) from π_ref to π is the normalized likelihood ratio (Thm. 3.2)

    q_{π/π_ref}(y) = (π(y)/π_ref(y)) / Σ_{y′} π(y′)/π_ref(y′),

and its Shannon entropy measures how spread the information learned by the update is: learning a
low-entropy DID reinforces the policy's mass on a few responses, a high-entropy DID smooths it
(the paper's account of log-likelihood displacement). DPO's reward β·ρ(y) = β·log q(y) + const.

What is logged (``did_metrics``), from the log-ratios the loss already computes, no extra pass:
the DID restricted to each example's K valid responses, q_k = softmax_k(ρ(y_k)), and

    did/entropy        H = −Σ_k q_k·log q_k ∈ [0, log K], the mean over examples
    did/entropy_norm   H / log K ∈ [0, 1] (1: π_θ/π_ref equal on every response, nothing learned
                       that tells them apart; 0: all of the differential information on one)
    did/chosen_mass    q of the best response (index 0), the mean over examples

For a pair, H is the binary entropy of σ(ρ(y_w) − ρ(y_l)), the preference probability the DID
assigns the pair (Thm. 3.3 at β = 1). Restricting the support to the observed responses is our
estimator (UNVERIFIED): the paper estimates the entropy of the full DID from K = 32 sampled
responses per prompt with importance weights (per its reviews); its estimator could not be read.
"""

from __future__ import annotations

import math

import torch

from unipo.parts.base import scalar
from unipo.preference.losses import Metrics, PreferenceInputs


@torch.no_grad()
def did_metrics(x: PreferenceInputs) -> Metrics:
    """``did/entropy``, ``did/entropy_norm``, ``did/chosen_mass`` of a batch (module docstring);
    {} when the inputs have no reference log-probs (reference-free losses)."""
    if x.ref_logprobs is None:
        return {}
    rho = x.log_ratios.detach().float()  # [N, K]
    valid = x.valid  # [N, K]
    q = rho.masked_fill(~valid, -math.inf).softmax(dim=1)  # [N, K], 0 on list padding
    plogp = torch.where(valid & (q > 0), q * q.clamp(min=1e-30).log(), torch.zeros_like(q))
    h = -plogp.sum(1)  # [N]
    k = valid.sum(1).float()  # [N]
    norm = h / k.log().clamp(min=1e-12)  # [N]
    return {
        "did/entropy": scalar(h.mean()),
        "did/entropy_norm": scalar(norm.mean()),
        "did/chosen_mass": scalar(q[:, 0].mean()),
    }
