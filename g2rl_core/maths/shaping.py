"""Group advantages, exploration scores and reward shaping (eq. 2 and 9-13).

Every function works on groups laid out as [G, m] (G prompts, m responses each; Phi as
[G, m, d]), for any m >= 1, and is equivariant to permuting the responses of a group.
All functions are pure: tensors in, tensors out.

The eq. 12 inconsistency (see ../shared/docs/g2rl-paper.md, section 4). With binary
rewards r in {-1, +1}, eq. 12-13 as printed give

    rtilde = r * (1 + lam * r * nubar) = r + lam * nubar,

so a *novel incorrect* response is penalised *less* (rtilde > -1). The prose of section
2.4 says the opposite for incorrect responses: high novelty amplifies the penalty
(rtilde < -1) and low novelty mitigates it. That reading needs a centred transform,

    rtilde = r * (1 + lam * (2 * nubar - 1)),

under which novelty scales the magnitude of the reward for both signs. We implement the
equation as printed as ``variant="equation"`` (the default) and the prose reading as
``variant="centered"``, and report both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from g2rl_core.errors import ConfigError

ShapingVariant = Literal["equation", "centered"]
NuNormalization = Literal["minmax", "none"]
SHAPING_VARIANTS: tuple[str, ...] = ("equation", "centered")
NU_NORMALIZATIONS: tuple[str, ...] = ("minmax", "none")


@dataclass(frozen=True)
class ShapingConfig:
    """G2RL's reward shaping settings (eq. 10-13 and section 2.5), validated in this one place.

    lam:       lambda of eq. 12, >= 0 (0 gives GRPO exactly). The paper does not state its value.
    variant:   "equation" (eq. 12-13 as printed) or "centered" (the prose of section 2.4); see the
               module docstring. "centered" needs lam <= 1: above it the factor 1 + lam (2 nubar - 1)
               turns negative for redundant responses, so a redundant correct response would get a
               negative reward and a redundant wrong one a positive reward, against the prose.
    normalize: "minmax" (eq. 11, nubar = min-max of nu within the group) or "none" (nubar = nu).
    clip:      c of section 2.5, rtilde = clip(rtilde, -c, c); c = 3 in the paper; None disables it.
    """

    lam: float = 1.0
    variant: str = "equation"
    normalize: str = "minmax"
    clip: float | None = 3.0

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam):
            raise ConfigError(f"lam = {self.lam!r} must be a finite number >= 0")
        if self.lam < 0:
            raise ConfigError(f"lam = {self.lam!r} must be >= 0")
        if self.variant not in SHAPING_VARIANTS:
            raise ConfigError(f"variant = {self.variant!r} is not allowed; choose one of {list(SHAPING_VARIANTS)}")
        if self.normalize not in NU_NORMALIZATIONS:
            raise ConfigError(f"normalize = {self.normalize!r} is not allowed; choose one of {list(NU_NORMALIZATIONS)}")
        if self.clip is not None and (
            isinstance(self.clip, bool) or not isinstance(self.clip, (int, float)) or not 0 < self.clip < math.inf
        ):
            raise ConfigError(f"clip = {self.clip!r} must be a finite number > 0, or null to disable it")
        if self.variant == "centered" and self.lam > 1:
            raise ConfigError(
                f"lam = {self.lam!r} with variant = 'centered': lam > 1 makes 1 + lam * (2 nubar - 1) negative for "
                "redundant responses and flips their reward's sign (a redundant correct answer would be punished); "
                "use lam <= 1 or variant = 'equation'"
            )

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``shape_rewards``."""
        return {"lam": self.lam, "variant": self.variant, "normalize": self.normalize, "clip": self.clip}


def _check_groups(name: str, x: Tensor, ndim: int) -> None:
    if x.ndim != ndim or x.shape[1] < 1:
        layout = "[G, m]" if ndim == 2 else "[G, m, d]"
        raise ValueError(f"{name} must have shape {layout} with m >= 1, got {tuple(x.shape)}")


def grpo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO group-standardised advantages (eq. 2), [G, m] -> [G, m].

        rbar = mean_i r(i),  s_r = sqrt(mean_i (r(i) - rbar)^2 + eps),  A(i) = (r(i) - rbar) / s_r

    The variance is the population variance (1/m), as printed. Degenerate groups: m = 1
    or all rewards equal give A = 0 exactly (the numerator is 0 and s_r >= sqrt(eps)).
    """
    _check_groups("rewards", rewards, 2)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    scale = torch.sqrt(centred.pow(2).mean(dim=1, keepdim=True) + eps)
    return centred / scale


def pairwise_cosine(phi: Tensor, eps: float = 1e-8) -> Tensor:
    """S_ij = <Phihat(i), Phihat(j)>, Phihat = Phi / (||Phi|| + eps) (eq. 9). [G, m, d] -> [G, m, m].

    A zero feature vector has Phihat = 0 and cosine 0 with everything, itself included.
    """
    _check_groups("phi", phi, 3)
    unit = phi / (phi.norm(dim=-1, keepdim=True) + eps)
    return unit @ unit.transpose(1, 2)


def exploration_scores(phi: Tensor, rewards: Tensor, eps: float = 1e-8) -> Tensor:
    """Gradient-guided exploration score nu (eq. 9-11), [G, m] in [0, 1].

        S_ij  = <Phihat(i), Phihat(j)>                                          (eq. 9)
        w_ij  = exp(r(j)) [j != i] / (sum_{k != i} exp(r(k)) + eps)              (eq. 10)
        nu(i) = max(1 - sum_{j != i} w_ij S_ij^2, 0)                             (eq. 11)

    ``rewards`` are the base rewards r (before shaping). The squared cosine makes an
    opposing direction as redundant as a parallel one. nu is invariant to rescaling any
    Phi(i) by a positive factor (up to the eps in the normalisation).

    Degenerate groups: m = 1 has no other response, so w = 0 and nu = 1. A zero Phi(i)
    has S_ij = 0 for all j, so nu(i) = 1 (and it does not lower the others' scores).
    Identical (or exactly opposite) features give S_ij^2 = 1, so nu = 1 - sum_j w_ij,
    which is ~1e-8-close to 0 (exactly 0 after the clamp when rounding overshoots).
    """
    _check_groups("phi", phi, 3)
    _check_groups("rewards", rewards, 2)
    if phi.shape[:2] != rewards.shape:
        raise ValueError(f"phi {tuple(phi.shape)} and rewards {tuple(rewards.shape)} must share [G, m]")
    m = rewards.shape[1]
    sq_cos = pairwise_cosine(phi.to(rewards.dtype), eps).pow(2)
    off_diag = ~torch.eye(m, dtype=torch.bool, device=rewards.device)
    numer = torch.exp(rewards).unsqueeze(1) * off_diag  # [G, i, j] = exp(r_j) [j != i]
    weights = numer / (numer.sum(dim=-1, keepdim=True) + eps)
    return torch.clamp(1.0 - (weights * sq_cos).sum(dim=-1), min=0.0)


def normalize_scores(nu: Tensor, normalize: NuNormalization = "minmax", eps: float = 1e-8) -> Tensor:
    """nubar: a bounded monotone transform of nu within each group (section 2.4), [G, m] in [0, 1].

    ``"minmax"``: (nu - min) / (max - min), the paper's example. A group whose scores are
    all equal (including m = 1) carries no within-group information and gets nubar = 0.5.
    ``"none"``: nu itself (already in [0, 1]).
    """
    _check_groups("nu", nu, 2)
    if normalize == "none":
        return nu
    if normalize != "minmax":
        raise ValueError(f"normalize must be one of {NU_NORMALIZATIONS}, got {normalize!r}")
    lo = nu.amin(dim=1, keepdim=True)
    span = nu.amax(dim=1, keepdim=True) - lo
    flat = span <= eps
    return torch.where(flat, torch.full_like(nu, 0.5), (nu - lo) / torch.where(flat, torch.ones_like(span), span))


def shape_rewards(
    rewards: Tensor,
    nu: Tensor,
    *,
    lam: float,
    variant: ShapingVariant = "equation",
    clip: float | None = 3.0,
    normalize: NuNormalization = "minmax",
) -> Tensor:
    """G2RL shaped rewards rtilde (eq. 12-13 and the rescaling of section 2.5), [G, m].

    ``variant="equation"`` (eq. 12-13 as printed):  rtilde = r * (1 + lam * r * nubar)
    ``variant="centered"`` (prose of section 2.4):  rtilde = r * (1 + lam * (2 * nubar - 1))
    then rtilde = clip(rtilde, -clip, clip) (c = 3 in the paper; None disables it).
    rtilde replaces r in eq. 2: ``grpo_advantages(shape_rewards(...))``.

    lam = 0 returns r unchanged (clip permitting), so the advantages equal GRPO's exactly.
    With r in {-1, +1} and lam < 2 the equation reading keeps every correct response above
    every incorrect one. See the module docstring for why the two readings differ.
    Degenerate groups: with all nubar equal (e.g. m = 1: nubar = 0.5 under minmax) the
    shaping is a common shift or scale of r, so standardised advantages match GRPO's.
    """
    _check_groups("rewards", rewards, 2)
    if nu.shape != rewards.shape:
        raise ValueError(f"nu {tuple(nu.shape)} and rewards {tuple(rewards.shape)} must have the same shape")
    ShapingConfig(lam=lam, variant=variant, normalize=normalize, clip=clip)  # the one validator
    nubar = normalize_scores(nu, normalize)
    if variant == "equation":
        factor = 1.0 + lam * rewards * nubar
    else:  # "centered"
        factor = 1.0 + lam * (2.0 * nubar - 1.0)
    shaped = rewards * factor
    return shaped if clip is None else shaped.clamp(-clip, clip)


def group_geometry(phi: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]:
    """nu statistics and the within-group pairwise Phi-cosine (off-diagonal) for logging."""
    nu = exploration_scores(phi, rewards)
    m = phi.shape[1]
    cos = pairwise_cosine(phi)[:, ~torch.eye(m, dtype=torch.bool)]
    return {
        "nu_mean": nu.mean().item(),
        "nu_std": nu.std().item() if nu.numel() > 1 else 0.0,
        "nu_min": nu.min().item(),
        "nu_max": nu.max().item(),
        "phi_cos_mean": cos.mean().item() if cos.numel() else float("nan"),
        "phi_neg_share": (cos < 0).float().mean().item() if cos.numel() else float("nan"),
    }
