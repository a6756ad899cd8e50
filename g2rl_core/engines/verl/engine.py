"""Phi inside verl's FSDP actor engine, from the log-prob pass it already makes (verl==0.9.1).

verl's old-policy pass (``compute_log_prob``) runs the actor over each packed micro-batch and
turns the LM head's logits into log-probs and entropies. When the micro-batch carries
``PHI_FLAG`` (set by ``G2RLTrainer`` for that pass only), ``PhiCaptureEngine`` also returns Phi:

1. ``prepare_model_inputs`` arms the capture with the micro-batch.
2. A forward hook on the LM head receives its raw output z_t (and, inside FSDP's forward, its
   unsharded W). ``response_rows`` maps each response token to its logits row, and
   ``g2rl_core.maths.features.phi_sums_from_logits`` turns those rows into Phi's per-sequence sums.
   Under Ulysses sequence parallelism each rank holds a slice of the packed sequence: it sums
   its own rows and the sums are all-reduced over the SP group (they add up exactly).
3. ``prepare_model_outputs`` adds Phi [mb, d] to the model outputs under ``PHI_KEY``. verl
   reorders it with the log-probs (dynamic batch sizes) and the worker writes it to the
   TransferQueue beside them.

The extra cost is a softmax over the response rows of logits that already exist and one
[mb, V] x [V, d] product per micro-batch; no second forward pass. Fused kernels
(``use_fused_kernels=True``) never materialise logits and are refused.

``G2RLActorRolloutRefWorker`` is verl's hybrid worker whose actor engine is a
``PhiCaptureEngine``; the reference model and every batch without the flag run unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from verl.utils import tensordict_utils as tu
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from g2rl_core.engines.verl.adapter import PHI_FLAG, PHI_KEY
from g2rl_core.maths.features import PhiSums, phi_from_sums, phi_sums_from_logits

#: Response rows per chunk of the Phi pass: peak extra memory ~ 2 x rows x V floats.
PHI_CHUNK_ROWS = 512


def response_rows(
    input_ids: Tensor,
    response_mask: Tensor,
    temperature: float | Tensor,
    *,
    logits_shape: tuple[int, ...],
    remove_padding: bool,
    sp_rank: int = 0,
) -> dict[str, Tensor | float]:
    """Where each response token's predicting logits row lies in the LM head's output.

    Args:
        input_ids: nested [mb, j] prompt + response ids (verl's no-padding layout; dense [mb, n]
            when every sequence has the same length).
        response_mask: nested [mb, j'] 1 on the response tokens that count (alpha_t), one entry
            per response token; its lengths are the response lengths.
        temperature: float, or [mb] per-sequence temperature.
        logits_shape: shape of the LM head's output: [1, L, V] packed (``remove_padding``; L is
            this rank's slice under sequence parallelism), or [mb, S, V] padded.
        sp_rank: this rank's index in the Ulysses group; its slice starts at sp_rank * L.

    Returns rows, token_ids, weights, segment_ids and temperature (float or per row) for
    ``phi_sums_from_logits``, restricted to the rows this rank holds.
    """
    ids, offsets = _jagged(input_ids)
    mask, mask_offsets = _jagged(response_mask)
    starts, ends = offsets[:-1], offsets[1:]
    lengths = mask_offsets.diff()
    if bool((lengths >= ends - starts).any()):
        raise ValueError("every sequence needs at least one prompt token before its response")
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=ids.device), lengths)
    within = torch.arange(len(seg), device=ids.device) - torch.repeat_interleave(mask_offsets[:-1], lengths)
    # Global packed position of the state that predicts response token j of sequence i.
    position = ends[seg] - lengths[seg] - 1 + within
    if remove_padding:
        local = logits_shape[1]
        rows = position - sp_rank * local
    else:
        rows = seg * logits_shape[1] + (position - starts[seg])
        local = logits_shape[0] * logits_shape[1]
    keep = (rows >= 0) & (rows < local)
    per_row_temperature = temperature[seg][keep] if isinstance(temperature, Tensor) else float(temperature)
    return {
        "rows": rows[keep],
        "token_ids": ids[position[keep] + 1],
        "weights": mask[keep],
        "segment_ids": seg[keep],
        "temperature": per_row_temperature,
    }


def _jagged(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """(values, offsets) of a per-sequence field: nested jagged, or dense [mb, n] when all lengths agree."""
    if tensor.is_nested:
        return tensor.values(), tensor.offsets()
    mb, n = tensor.shape[:2]
    return tensor.reshape(mb * n, *tensor.shape[2:]), torch.arange(mb + 1, device=tensor.device) * n


def _full(tensor: Tensor) -> Tensor:
    """A tensor-parallel (DTensor) LM head's weight or logits, gathered; plain tensors unchanged."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class PhiCaptureEngine(FSDPEngineWithLMHead):
    """verl's FSDP LM engine that also returns Phi for micro-batches carrying ``PHI_FLAG``."""

    _phi_batch = None  # the armed micro-batch, between prepare_model_inputs and the LM head's forward
    _phi_sums: PhiSums | None = None
    _phi_hook = None

    def _lm_head(self) -> torch.nn.Module:
        module = self.module
        while not hasattr(module, "get_output_embeddings") and hasattr(module, "module"):
            module = module.module  # FSDP1 / DDP-style wrappers
        head = module.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(module).__name__} has no LM head (get_output_embeddings() is None)")
        return head

    def prepare_model_inputs(self, micro_batch):
        model_inputs, output_args = super().prepare_model_inputs(micro_batch)
        if tu.get_non_tensor_data(data=micro_batch, key=PHI_FLAG, default=False):
            if tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False):
                raise ValueError(
                    "G2RL's Phi needs the LM head's logits; set actor_rollout_ref.model.use_fused_kernels=false"
                )
            if self._phi_hook is None:
                self._phi_hook = self._lm_head().register_forward_hook(self._capture_phi)
            self._phi_batch, self._phi_sums = micro_batch, None
        return model_inputs, output_args

    def _capture_phi(self, head: torch.nn.Module, args, output: Tensor) -> None:
        micro_batch = self._phi_batch
        if micro_batch is None:
            return
        self._phi_batch = None
        logits = _full(output)
        remove_padding = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
        sp_rank = torch.distributed.get_rank(self.ulysses_parallel_group) if self.use_ulysses_sp else 0
        layout = response_rows(
            micro_batch["input_ids"],
            micro_batch["response_mask"],
            micro_batch["temperature"],
            logits_shape=tuple(logits.shape),
            remove_padding=remove_padding,
            sp_rank=sp_rank,
        )
        # verl's forward runs under bf16 autocast; Phi's softmax and products stay in float32.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            self._phi_sums = phi_sums_from_logits(
                logits,
                layout["rows"],
                layout["token_ids"],
                layout["weights"],
                layout["segment_ids"],
                micro_batch["input_ids"].shape[0],
                _full(head.weight),
                temperature=layout["temperature"],
                chunk_size=PHI_CHUNK_ROWS,
            )

    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        model_output = super().prepare_model_outputs(output, output_args, micro_batch, logits_processor_func)
        if tu.get_non_tensor_data(data=micro_batch, key=PHI_FLAG, default=False):
            sums, self._phi_sums = self._phi_sums, None
            if sums is None:
                raise RuntimeError("G2RL Phi: the LM head did not run as a module in this forward pass")
            if self.use_ulysses_sp:
                for tensor in (sums.weighted, sums.weight):
                    torch.distributed.all_reduce(tensor, group=self.ulysses_parallel_group)
            model_output[PHI_KEY] = phi_from_sums(sums).float()
        return model_output


class G2RLTrainingWorker(TrainingWorker):
    """verl's TrainingWorker whose FSDP engine is a ``PhiCaptureEngine``."""

    def __init__(self, config):
        super().__init__(config)
        if type(self.engine) is not FSDPEngineWithLMHead:
            raise NotImplementedError(
                f"G2RL's Phi capture supports verl's FSDP engine (actor strategy fsdp or fsdp2); "
                f"this actor uses {type(self.engine).__name__}"
            )
        # Same object and state; the class only adds the capture (inactive without PHI_FLAG).
        self.engine.__class__ = PhiCaptureEngine


class G2RLActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's hybrid actor/rollout/ref worker with a Phi-capturing actor."""

    actor_worker_cls = G2RLTrainingWorker
