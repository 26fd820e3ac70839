"""Muon for the hidden weight matrices, AdamW for the rest: `run_clm.py --optim muon`.

Muon (Jordan et al., 2024) orthogonalises the momentum of each 2-D weight by a few Newton-Schulz
iterations, so every direction of the matrix moves at the same rate. As modded-nanogpt and nanochat train
GPT-2, it takes the hidden matrices (attention `c_attn`/`c_proj`, MLP `c_fc`/`c_proj`); the embeddings
(`wte`, `wpe`, and the head tied to `wte`), biases and LayerNorm parameters stay with AdamW. torch ships
both (`torch.optim.Muon`, `torch.optim.AdamW`); [`MuonAdamW`] is the one optimizer object over the two
that the Trainer needs: one `step`, one `zero_grad`, one learning-rate schedule scaling every group's own
rate, and one state dict saved in each checkpoint, so a resumed run continues exactly.

torch's Muon runs its Newton-Schulz iterations in bf16: cheap on a GPU or a CPU that multiplies bf16 natively
(AVX512-BF16, AMX), about 27 AdamW steps on a CPU that only emulates it (AVX2). There [`Fp32Muon`] runs the
same iterations in fp32 and the same update otherwise, so Muon pays on both kinds of CPU.

    >>> muon = (MuonAdamW, muon_adamw_kwargs(model, args))  # doctest: +SKIP
    >>> trainer = Trainer(model, args, optimizer_cls_and_kwargs=muon)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, TrainingArguments

from .hardware import native_bf16

# The value of `--optim` that selects it (transformers' own optimizer names are an enum without it).
MUON = "muon"


def hidden_matrices(model: PreTrainedModel) -> list[nn.Parameter]:
    """The weights Muon trains: every `nn.Linear` weight inside the transformer body (`model.base_model`).

    The head (tied to `wte` or not) and any task head sit outside the body; embeddings are not `nn.Linear`.
    """
    matrices = [
        module.weight
        for module in model.base_model.modules()
        if isinstance(module, nn.Linear) and module.weight.requires_grad
    ]
    if not matrices:
        raise ValueError(f"--optim {MUON}: {type(model).__name__} has no nn.Linear weights in its body for Muon.")
    return matrices


def _closure_loss(closure: Any) -> Any:
    """The loss of an optimizer's `closure` (which recomputes it with gradients), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def newton_schulz(
    matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> torch.Tensor:
    """Muon's orthogonalisation of `matrix` (out, in) = U S V^T in fp32: about U V^T, by `steps` quintic iterations.

    The iterations of torch's Muon (Keller Jordan's coefficients push every singular value towards 0.5-1.5
    rather than exactly 1, which trains as well), in fp32 instead of bf16.
    """
    a, b, c = coefficients
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.float().T if tall else matrix.float()  # (small, large): the Gram matrix is small x small
    x = x / x.norm().clamp(min=eps)  # Frobenius norm 1, so the spectral norm is at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a x + (b G + c G^2) x
    return x.T if tall else x


class Fp32Muon(torch.optim.Muon):
    """`torch.optim.Muon` with its Newton-Schulz iterations in fp32 ([`newton_schulz`]) instead of bf16.

    For a device that emulates bf16 products (a CPU without AVX512-BF16 or AMX), where torch's bf16
    iterations cost many times an AdamW step. The same arguments, update (Nesterov momentum, decoupled weight
    decay, the learning rate scaled by the matrix's shape as `adjust_lr_fn` says) and state as torch's Muon:
    a checkpoint of either loads into the other, so a run may resume on the other kind of machine.
    """

    @torch.no_grad()
    def step(self, closure=None):
        """One Muon update of every parameter that has a gradient."""
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)  # torch's checks and momentum buffers
            momentum, lr = group["momentum"], group["lr"]
            for param, grad, buffer in zip(params, grads, buffers, strict=True):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                out, into = param.shape
                if group["adjust_lr_fn"] == "match_rms_adamw":  # an update of AdamW's RMS, 0.2
                    scale = 0.2 * math.sqrt(max(out, into))
                else:  # "original" (None): spectral norm lr * sqrt(max(1, out / in))
                    scale = math.sqrt(max(1.0, out / into))
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-lr * scale)
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` on `muon_params`, `torch.optim.AdamW` on every other parameter, as one optimizer.

    Muon is torch's where the parameters' device multiplies bf16 natively, [`Fp32Muon`] elsewhere
    (`fp32_newton_schulz`).

    Args:
        params: the parameters or parameter groups to train (the Trainer passes two groups: with and without
            weight decay). Each group is split in two: its `muon_params` go to Muon, the rest to AdamW; both
            keep the group's `weight_decay` (decoupled: each step multiplies a weight by 1 - lr * weight_decay).
        muon_params: the 2-D hidden weights for Muon, e.g. [`hidden_matrices`].
        lr: AdamW's learning rate.
        muon_lr: Muon's learning rate, in torch's default ("original", Keller Jordan's) scaling: an update of
            an (out, in) matrix has spectral norm `muon_lr * sqrt(max(1, out / in))`. 0.02 is modded-nanogpt's
            and nanochat's value.
        betas, eps: AdamW's.
        momentum: Muon's momentum (Nesterov).
        fused: AdamW's fused kernel (None: torch's default choice).
        fp32_newton_schulz: Muon's iterations in fp32 ([`Fp32Muon`]) or in bf16 (torch's Muon); None: fp32
            where the parameters' device has no native bf16 products. The state is the same either way.

    The AdamW groups come first in `param_groups`, so a learning rate read from the first group (the Trainer's
    log) is AdamW's. `param_groups` and `state` hold both optimizers' groups and state: a scheduler scales
    every group's rate by the same factor, and `state_dict()` / `load_state_dict()` cover both.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        muon_params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        muon_lr: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        fused: bool | None = None,
        fp32_newton_schulz: bool | None = None,
    ) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        hidden = {id(p) for p in muon_params}
        adamw_groups, muon_groups = [], []
        for group in groups:
            options = {key: value for key, value in group.items() if key != "params"}
            tensors = list(group["params"])
            mine = [p for p in tensors if id(p) in hidden]
            rest = [p for p in tensors if id(p) not in hidden]
            if rest:
                adamw_groups.append({**options, "params": rest})
            if mine:
                muon_groups.append({**options, "params": mine})
        if not muon_groups:
            raise ValueError("MuonAdamW: none of muon_params is among the parameters to train.")
        self.adamw = torch.optim.AdamW(
            adamw_groups or [{"params": []}], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused
        )
        if fp32_newton_schulz is None:
            fp32_newton_schulz = not native_bf16(muon_groups[0]["params"][0].device.type)
        muon = Fp32Muon if fp32_newton_schulz else torch.optim.Muon
        self.muon = muon(muon_groups, lr=muon_lr, weight_decay=weight_decay, momentum=momentum)
        # The very group dicts of the two optimizers, so a scheduler that sets group["lr"] reaches both.
        super().__init__([*self.adamw.param_groups, *self.muon.param_groups], defaults={})
        self._share_groups_and_state()

    def _share_groups_and_state(self) -> None:
        """Point both optimizers at this one's groups and state (after `__init__` and `load_state_dict`)."""
        n_adamw = len(self.adamw.param_groups)
        self.adamw.param_groups = self.param_groups[:n_adamw]
        self.muon.param_groups = self.param_groups[n_adamw:]
        self.adamw.state = self.muon.state = self.state  # keyed by parameter: the two sets are disjoint

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter: Muon's for the hidden matrices, AdamW's for the rest."""
        loss = _closure_loss(closure)
        self.adamw.step()
        self.muon.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """`Optimizer.load_state_dict`, which replaces the groups and state that the two optimizers share."""
        super().load_state_dict(state_dict)
        self._share_groups_and_state()


def muon_adamw_kwargs(model: PreTrainedModel, args: TrainingArguments) -> dict[str, Any]:
    """`MuonAdamW`'s arguments from the training arguments (the Trainer adds the parameter groups)."""
    return {
        "muon_params": hidden_matrices(model),
        "lr": args.learning_rate,
        "muon_lr": args.muon_learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        # AdamW's fused kernel where torch has one for the training device, as --optim adamw_torch_fused.
        "fused": True if args.device.type in ("cpu", "cuda") else None,
    }


__all__ = ["MUON", "Fp32Muon", "MuonAdamW", "hidden_matrices", "muon_adamw_kwargs", "newton_schulz"]
