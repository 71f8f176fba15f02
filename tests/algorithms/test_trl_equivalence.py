"""Our losses against TRL's, on identical tensors, for the settings both support.

TRL is a test-only dependency (the ``dev`` extra). Its loss code lives in trainer
methods, so each test calls the real method on a stand-in ``self`` that carries
only the attributes the method reads, and hands it our per-token log-probs in
place of a model forward. Values and gradients must agree to 1e-6.

Not compared, because TRL computes them inside its generation step rather than
in a callable: the advantages (TRL's "group" std is Bessel-corrected with eps
1e-4; ours is the population std with eps 1e-6) and the vLLM importance ratio
itself, whose formula is transcribed below from trl 1.16
(``GRPOTrainer._generate_and_score_completions``) and fed to TRL's loss.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is not installed (pip install -e '.[dev]')")
from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402

from actors.learner.learner import LossTotals, compose_loss  # noqa: E402
from algorithms.config import AlgorithmConfig  # noqa: E402
from algorithms.logprobs import sequence_logprobs  # noqa: E402
from algorithms.preference import dpo_loss, simpo_loss  # noqa: E402

B, T = 4, 5
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)


class _Accelerator:
    num_processes = 1
    process_index = 0
    device = torch.device("cpu")

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    gather_for_metrics = gather


def _tensors(seed: int, spread: float, sampling_spread: float = 0.5) -> dict[str, torch.Tensor]:
    """Current, old (proximal), sampling and reference log-probs; advantages of both signs."""
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g) * 3
    return {
        "logps": logps,
        "old": logps + spread * torch.randn(B, T, generator=g),
        "sampling": logps + sampling_spread * torch.randn(B, T, generator=g),
        "ref": logps + 0.3 * torch.randn(B, T, generator=g),
        "advantages": torch.tensor([1.2, -0.7, 0.4, -1.5]),
    }


def _trl_grpo_loss(
    t: dict[str, torch.Tensor],
    loss_type: str,
    level: str,
    eps: tuple[float, float],
    beta: float = 0.0,
    is_mode: str | None = None,
    is_cap: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """TRL's ``GRPOTrainer._compute_loss`` on our tensors: (loss, d loss / d logps, TRL's metrics)."""
    logps = t["logps"].clone().requires_grad_(True)
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": MASK.clone(),
        "advantages": t["advantages"],
        "old_per_token_logps": t["old"],
        "num_items_in_batch": MASK.sum(),
    }
    if beta:
        inputs["ref_per_token_logps"] = t["ref"]
    if is_mode:
        inputs["importance_sampling_ratio"] = _trl_vllm_is_ratio(t["old"], t["sampling"], is_mode, is_cap)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros(B, T), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=eps[0],
        epsilon_high=eps[1],
        use_vllm=is_mode is not None,
        vllm_importance_sampling_correction=is_mode is not None,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=T,
        accelerator=_Accelerator(),
        _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
    )
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    loss.backward()
    return loss.detach(), logps.grad, {k: v[-1] for k, v in fake._metrics["train"].items()}


def _trl_vllm_is_ratio(old: torch.Tensor, sampling: torch.Tensor, mode: str, cap: float) -> torch.Tensor:
    """Transcribed from trl 1.16 ``_generate_and_score_completions`` (clip_min None)."""
    diff = (old - sampling) * MASK
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=None, max=cap)
    return ratio.masked_fill(ratio > cap, 0.0)


def _ours(t: dict[str, torch.Tensor], algorithm: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
    s = algorithm.settings
    logps = t["logps"].clone().requires_grad_(True)
    # the clip's old policy: TRL's old_per_token_logps is the behaviour policy (as ours by default)
    # unless the vLLM correction is on, where it is the recomputed (proximal) policy.
    tensors = {
        "completion_mask": MASK,
        "advantages": t["advantages"],
        "ref_logprobs": t["ref"],
        "old_logprobs": t["sampling"] if s.uses_proximal else t["old"],
    }
    if s.uses_proximal:
        tensors["proximal_logprobs"] = t["old"]
    loss, stats = compose_loss(logps, tensors, s, LossTotals(B, int(MASK.sum()), T))
    loss.backward()
    return loss.detach(), logps.grad, stats


CASES = {  # id: (TRL loss_type, TRL importance_sampling_level, (eps, eps_high), our AlgorithmConfig)
    "grpo": ("grpo", "token", (0.2, 0.2), AlgorithmConfig(name="grpo")),
    "bnpo=token_mean": ("bnpo", "token", (0.2, 0.2), AlgorithmConfig(name="grpo", loss_aggregation="token_mean")),
    "dapo": ("dapo", "token", (0.2, 0.28), AlgorithmConfig(name="dapo")),
    "dr_grpo": ("dr_grpo", "token", (0.2, 0.2), AlgorithmConfig(name="dr_grpo")),
    "gspo": ("grpo", "sequence", (3e-4, 4e-4), AlgorithmConfig(name="gspo")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_policy_losses_match_trl(case: str) -> None:
    loss_type, level, eps, ours = CASES[case]
    t = _tensors(seed=len(case), spread=3e-4 if level == "sequence" else 0.3)
    trl_loss, trl_grad, trl_metrics = _trl_grpo_loss(t, loss_type, level, eps)
    our_loss, our_grad, stats = _ours(t, ours)
    assert float(our_loss) == pytest.approx(float(trl_loss), abs=1e-6)
    assert torch.allclose(our_grad, trl_grad, atol=1e-6)
    assert stats["clip/low_frac"] == pytest.approx(trl_metrics["clip_ratio/low_mean"], abs=1e-6)
    assert stats["clip/high_frac"] == pytest.approx(trl_metrics["clip_ratio/high_mean"], abs=1e-6)
    assert stats["clip/frac"] == pytest.approx(trl_metrics["clip_ratio/region_mean"], abs=1e-6)
    assert stats["clip/frac"] > 0 or case == "dr_grpo"  # the data does exercise the clip


def test_kl_loss_term_matches_trl() -> None:
    t = _tensors(seed=7, spread=0.3)
    trl_loss, trl_grad, trl_metrics = _trl_grpo_loss(t, "grpo", "token", (0.2, 0.2), beta=0.04)
    our_loss, our_grad, stats = _ours(t, AlgorithmConfig(name="grpo", beta=0.04, kl_estimator="k3"))
    assert float(our_loss) == pytest.approx(float(trl_loss), abs=1e-6)
    assert torch.allclose(our_grad, trl_grad, atol=1e-6)
    assert stats["kl"] == pytest.approx(trl_metrics["kl"], abs=1e-6)


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_rollout_correction_matches_trl_vllm_importance_sampling(mode: str) -> None:
    t = _tensors(seed=1, spread=0.3, sampling_spread=0.8)  # sequence ratios 9.2, 0.35, 2.1, 12.4: cap 3 hit
    level, how = mode.split("_")
    trl_loss, trl_grad, _ = _trl_grpo_loss(t, "dapo", "token", (0.2, 0.28), is_mode=mode, is_cap=3.0)
    ours = AlgorithmConfig(
        name="dapo", rollout_correction=how, rollout_correction_level=level, rollout_correction_cap=3.0
    )
    our_loss, our_grad, stats = _ours(t, ours)
    assert float(our_loss) == pytest.approx(float(trl_loss), abs=1e-6)
    assert torch.allclose(our_grad, trl_grad, atol=1e-6)
    assert stats["is/clipped_frac"] > 0  # the cap is hit somewhere


def test_simpo_matches_trl_cpo_trainer() -> None:
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(3)
    chosen = -torch.rand(B, T, generator=g) * 2
    rejected = -torch.rand(B, T, generator=g) * 2
    rejected_mask = MASK.flip(0)
    cw, lw = sequence_logprobs(chosen, MASK)
    cl, ll = sequence_logprobs(rejected, rejected_mask)
    fake = SimpleNamespace(
        alpha=0.0, loss_type="simpo", beta=2.0, simpo_gamma=1.0, label_smoothing=0.0, accelerator=_Accelerator()
    )
    # CPO's SimPO takes average log-probs (its get_batch_logps with average_log_prob=True)
    trl_losses, _, _ = CPOTrainer.cpo_loss(fake, cw / lw, cl / ll)
    ours, _ = simpo_loss(cw, lw, cl, ll, beta=2.0, gamma=1.0)
    assert float(ours) == pytest.approx(float(trl_losses.mean()), abs=1e-6)


def test_dpo_matches_trl_dpo_trainer() -> None:
    from trl.trainer.dpo_trainer import DPOTrainer

    g = torch.Generator().manual_seed(5)
    mask = torch.cat([MASK, MASK.flip(0)])  # chosen rows, then rejected rows (TRL's layout)
    per_token = torch.where(mask.bool(), -torch.rand(2 * B, T, generator=g) * 2, 0.0)
    ref_c, ref_r = -torch.rand(B, generator=g) * 6, -torch.rand(B, generator=g) * 6
    logps = per_token.clone().requires_grad_(True)

    def model(**kwargs):  # TRL reads log-probs of the completion positions from a fused forward
        zeros = torch.zeros(2 * B, T)
        return SimpleNamespace(
            log_probs=logps[:, 1:], entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None
        )

    fake = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid"],
        loss_weights=[1.0],
        beta=0.1,
        label_smoothing=0.0,
        use_weighting=False,
        _total_train_tokens=0,
        _tp_size=1,
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, T, dtype=torch.long),
        "attention_mask": mask.long(),
        "completion_mask": mask.long(),
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    trl_loss = DPOTrainer._compute_loss(fake, model, inputs, return_outputs=False)
    trl_loss.backward()
    trl_grad = logps.grad.clone()

    mine = per_token.clone().requires_grad_(True)
    sums, _ = sequence_logprobs(mine[:, 1:], mask[:, 1:])
    ours, _ = dpo_loss(sums[:B], sums[B:], ref_c, ref_r, beta=0.1)
    ours.backward()
    assert float(ours.detach()) == pytest.approx(float(trl_loss.detach()), abs=1e-6)
    # on completion tokens (TRL's fused forward gives padding log-prob 0 and no gradient; the stand-in does not)
    assert torch.allclose(mine.grad[:, 1:][mask[:, 1:].bool()], trl_grad[:, 1:][mask[:, 1:].bool()], atol=1e-6)
