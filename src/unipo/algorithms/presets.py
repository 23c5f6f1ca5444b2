"""Built-in presets. Each is a few lines: parts, paper, and the defaults the paper uses.

The presets live in small files by family and are all registered by importing this module:
``presets_grpo`` (group/batch advantages, GSPO, PPO with a critic, REINFORCE),
``presets_entropy`` (Clip-Cov, KL-Cov, forking tokens), ``presets_t2`` and ``presets_t2_select`` (the
seeds' T2 entropy-control, clipping and selection methods),
``presets_adv`` (the seeds' advantage estimators), ``presets_peers`` (verl's and TRL's newer
baselines: CISPO, SAPO, GMPO, GPG, DPPO, ReMax, OPO, GDPO, pass@k GRPO; PACS and ReMix),
``presets_pref`` (P3O, RTO, f-DPG: the preference papers' methods that sample and read rewards),
``presets_explore`` (G2RL, ETTRL: a π_old feature pass, a tree rollout) and ``presets_sched``
(prompt schedulers and buffers: MMR1, PCL, Rollout-GDRO, RoRecomp, replay).
"""

from __future__ import annotations

from unipo.algorithms import (
    presets_adv,  # noqa: F401  (T2 advantage estimators: bnpo, canon, riskpo, rover, ...)
    presets_agents,  # noqa: F401  (T3 agent methods: igpo, spa_rl, epo, spear, loop, supo, r3l, ...)
    presets_explore,  # noqa: F401  (G2RL's gradient-guided scaling, ETTRL's tree rollouts)
    presets_peers,  # noqa: F401  (peers' baselines: cispo, sapo, gmpo, remax, ...)
    presets_pref,  # noqa: F401  (preference papers on the RL side: p3o, rto, f_dpg_*)
    presets_sched,  # noqa: F401  (schedulers and buffers: mmr1, pcl, rollout_gdro, rorecomp, grpo_replay)
    presets_t2,  # noqa: F401  (T2 entropy control: lp_reg, siren, aepo, steer, spine, light_if)
    presets_t2_select,  # noqa: F401  (T2 clipping and selection: hpt, bapo, hapo, d3s, capo, ares, ...)
)
from unipo.algorithms.presets_entropy import clip_cov, forking_tokens, kl_cov
from unipo.algorithms.presets_grpo import (
    dapo,
    dr_grpo,
    grpo,
    gspo,
    lite_ppo,
    ppo,
    reinforce,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
)

__all__ = [
    "clip_cov",
    "dapo",
    "dr_grpo",
    "forking_tokens",
    "grpo",
    "gspo",
    "kl_cov",
    "lite_ppo",
    "ppo",
    "reinforce",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "rloo",
]
