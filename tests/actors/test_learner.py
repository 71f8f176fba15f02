import math

import pytest
import torch

from actors.learner.learner import Learner, LearnerConfig, LoraConfig, collate
from actors.messages import TrainBatch
from actors.model.loading import load_causal_lm, resolve_model_path
from actors.weights.sync import ObjectStoreWeightSync
from algorithms.config import AlgorithmConfig
from algorithms.logprobs import token_logprobs


def _batch(step: int = 0) -> TrainBatch:
    return TrainBatch(
        step=step,
        prompt_token_ids=[[1, 10, 11], [1, 12]],
        completion_token_ids=[[20, 21, 2], [22]],
        sampling_logprobs=[[-6.9, -6.9, -6.9], [-6.9]],
        advantages=[1.0, -1.0],
        policy_versions=[step, step],
    )


def test_collate_aligns_completion_mask_with_next_token() -> None:
    t = collate(_batch(), slice(0, 2))
    assert t["input_ids"].tolist() == [[1, 10, 11, 20, 21, 2], [1, 12, 22, 0, 0, 0]]
    # position t predicts token t+1: completion tokens start at index len(prompt) - 1
    assert t["completion_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert t["old_logprobs"][1].tolist()[1] == pytest.approx(-6.9)
    assert t["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]


def test_train_step_updates_weights_and_version(tiny_model_config) -> None:
    learner = Learner(LearnerConfig(lr=1e-2), tiny_model_config, AlgorithmConfig(), temperature=1.0)
    before = {k: v.clone() for k, v in learner.backend.model.state_dict().items()}
    result = learner.train(_batch(0))
    assert result.policy_version == learner.version == 1
    assert math.isfinite(result.metrics["loss"]) and result.metrics["grad_norm"] > 0
    after = learner.backend.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="learner is at version 1 but got the batch for step 0"):
        learner.train(_batch(0))


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "sequence_sum", "constant"])
def test_micro_batches_give_the_same_gradient(tiny_model_config, aggregation: str) -> None:
    """Accumulating two micro-batches equals one full batch, for every loss aggregation
    (each micro-batch loss is normalised by the whole minibatch's totals).

    Gradients are compared, not post-Adam weights: Adam's first step is about
    lr * sign(g), which turns float noise in near-zero gradients into lr-sized
    differences.
    """
    grads = []
    algorithm = AlgorithmConfig(loss_aggregation=aggregation)
    for micro in (2, 1):
        learner = Learner(
            LearnerConfig(lr=1e-2, micro_batch_size=micro), tiny_model_config, algorithm, 1.0, max_new_tokens=12
        )
        step = learner.backend.step
        learner.backend.step = lambda step=step, m=learner.backend.model: (
            grads.append({n: p.grad.clone() for n, p in m.named_parameters()}),
            step(),
        )[1]
        learner.train(_batch())
    for name in grads[0]:
        a, b = grads[0][name], grads[1][name]
        assert (a - b).norm() <= 1e-4 * a.norm(), name  # equal up to float summation order


def test_export_round_trip_reproduces_policy(tiny_model_config) -> None:
    learner = Learner(LearnerConfig(lr=1e-2), tiny_model_config, AlgorithmConfig(name="gspo"), 1.0)
    learner.train(_batch())
    update = learner.export_weights()
    assert update.version == 1
    target = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    ObjectStoreWeightSync().apply(update, target)
    ids = torch.tensor([[1, 10, 11, 20]])
    with torch.no_grad():
        assert torch.allclose(target(input_ids=ids).logits, learner.backend.model(input_ids=ids).logits, atol=1e-6)


def test_lora_export_is_merged_and_training_model_stays_unmerged(tiny_model_config) -> None:
    learner = Learner(
        LearnerConfig(lr=5e-2, lora=LoraConfig(enabled=True, r=4, alpha=8)), tiny_model_config, AlgorithmConfig(), 1.0
    )
    learner.train(_batch())
    update = learner.export_weights()
    assert not any("lora" in k for k in update.tensors)
    target = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    ObjectStoreWeightSync().apply(update, target)
    ids = torch.tensor([[1, 10, 11, 20]])
    with torch.no_grad():
        assert torch.allclose(target(input_ids=ids).logits, learner.backend.model(input_ids=ids).logits, atol=1e-5)
    # only adapter weights are trainable, and a second step still works on the unmerged model
    trainable = [n for n, p in learner.backend.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    learner.train(_batch(1))


def test_bf16_weights_travel_through_numpy(tiny_model_config) -> None:
    net = load_causal_lm(resolve_model_path(tiny_model_config), "bfloat16")
    sync = ObjectStoreWeightSync()
    update = sync.export(net.state_dict(), version=3)
    target = load_causal_lm(resolve_model_path(tiny_model_config), "bfloat16")
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    sync.apply(update, target)
    for (name, a), b in zip(net.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_lora_export_never_modifies_the_training_model(tiny_model_config) -> None:
    """Exports compute W + delta on the side; in bf16 an in-place merge/unmerge would drift W."""
    from actors.model.loading import ModelConfig

    cfg = ModelConfig(cache_dir=tiny_model_config.cache_dir, dtype="bfloat16")
    lora = LoraConfig(enabled=True, r=4, alpha=8)
    learner = Learner(LearnerConfig(lr=5e-2, precision="pure", lora=lora), cfg, AlgorithmConfig(), 1.0)
    learner.train(_batch())
    before = {k: v.clone() for k, v in learner.backend.model.state_dict().items()}
    for _ in range(3):
        learner.export_weights()
    after = learner.backend.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _rich_batch(step: int = 0) -> TrainBatch:
    """Four sequences of different lengths in two groups, with rewards and group ids."""
    return TrainBatch(
        step=step,
        prompt_token_ids=[[1, 10, 11], [1, 12], [1, 13, 14, 15], [1, 16]],
        completion_token_ids=[[20, 21, 2], [22], [23, 24], [25, 26, 27, 2]],
        sampling_logprobs=[[-6.9] * 3, [-6.9], [-6.9] * 2, [-6.9] * 4],
        advantages=[1.0, -1.0, 0.5, -0.5],
        policy_versions=[step] * 4,
        rewards=[1.0, 0.0, 0.8, 0.2],
        group_ids=[0, 0, 1, 1],
    )


def _initial_logprobs(tiny_model_config, batch: TrainBatch) -> list[torch.Tensor]:
    model = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    t = collate(batch, slice(0, len(batch)))
    with torch.no_grad():
        logps = token_logprobs(
            model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits[:, :-1], t["input_ids"][:, 1:]
        )
    keep = t["completion_mask"].bool()
    return [logps[i][keep[i]] for i in range(len(batch))]


def test_no_reference_is_loaded_when_beta_is_zero(tiny_model_config) -> None:
    learner = Learner(LearnerConfig(), tiny_model_config, AlgorithmConfig(), 1.0)
    assert learner.backend.reference is None and not learner.backend.has_reference
    with pytest.raises(RuntimeError, match="no reference"):
        with learner.backend.reference_model():
            pass


def test_full_finetuning_reference_is_a_frozen_copy_of_the_initial_policy(tiny_model_config) -> None:
    learner = Learner(LearnerConfig(lr=1e-2), tiny_model_config, AlgorithmConfig(beta=0.1), 1.0)
    ref = learner.backend.reference
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    result = learner.train(_batch())
    assert result.metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    # after the step the policy moved; the reference did not
    initial = _initial_logprobs(tiny_model_config, _batch())
    prepared = learner._no_grad_logprobs(_batch(1), proximal=True, reference=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(prepared["ref_logprobs"], initial))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(prepared["proximal_logprobs"], initial))
    assert learner.train(_batch(1)).metrics["kl"] > 0


def test_lora_reference_is_the_base_model_with_adapters_disabled(tiny_model_config) -> None:
    learner = Learner(
        LearnerConfig(lr=5e-2, lora=LoraConfig(enabled=True, r=4, alpha=8)),
        tiny_model_config,
        AlgorithmConfig(beta=0.1),
        1.0,
    )
    assert learner.backend.reference is None  # no second copy of the model
    learner.train(_batch())
    learner.train(_batch(1))  # the adapters now change the policy
    initial = _initial_logprobs(tiny_model_config, _batch())
    prepared = learner._no_grad_logprobs(_batch(2), proximal=True, reference=True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(prepared["ref_logprobs"], initial))
    assert not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(prepared["proximal_logprobs"], initial))


def test_minibatches_and_iterations_count_optimizer_steps(tiny_model_config) -> None:
    # gspo: 4 minibatches of the 4 sequences; 2 iterations -> 8 optimiser steps, one version.
    learner = Learner(LearnerConfig(lr=1e-3), tiny_model_config, AlgorithmConfig(name="gspo", num_iterations=2), 1.0)
    result = learner.train(_rich_batch())
    assert result.metrics["optim/steps"] == 8 and result.policy_version == learner.version == 1
    # a 2-sequence batch cannot make 4 minibatches: 2 steps
    learner2 = Learner(LearnerConfig(lr=1e-3), tiny_model_config, AlgorithmConfig(name="gspo"), 1.0)
    assert learner2.train(_batch()).metrics["optim/steps"] == 2


def _shifted_batch(tiny_model_config, shifts: list[list[float]]) -> TrainBatch:
    """``_rich_batch`` whose behaviour log-probs are the initial model's own minus
    ``shifts`` (one per completion token): pi_prox / pi_behav = exp(shift) on each
    token, whatever weights this machine's warm-up produced."""
    batch = _rich_batch()
    initial = _initial_logprobs(tiny_model_config, batch)
    behaviour = [(lp - torch.tensor(d)).tolist() for lp, d in zip(initial, shifts)]
    return TrainBatch(**{**batch.__dict__, "sampling_logprobs": behaviour})


def test_proximal_policy_is_the_pre_update_policy(tiny_model_config) -> None:
    # num_iterations 2: proximal log-probs are recomputed once, before any update; the first
    # pass's ratio pi/pi_prox is then 1, so nothing is clipped in it.
    learner = Learner(LearnerConfig(lr=1e-3), tiny_model_config, AlgorithmConfig(num_iterations=2), 1.0)
    batch = _shifted_batch(tiny_model_config, [[1.0] * 3, [1.0], [1.0] * 2, [1.0] * 4])
    prepared = learner._prepare(batch)
    initial = _initial_logprobs(tiny_model_config, batch)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(prepared["proximal_logprobs"], initial))
    result = learner.train(batch)
    assert result.metrics["optim/steps"] == 2
    # The behaviour policy lies exactly 1 nat below the proximal one on every token, in both
    # passes (the proximal policy stays the pre-update one): pi_prox / pi_behav = e.
    assert result.metrics["is/ratio_mean"] == pytest.approx(math.e, rel=1e-4)
    # pass 1's gap is exactly 1 (pass 2's adds the first update's change, of either sign)
    assert result.metrics["logprob_gap/mean_abs"] > 0.5


def test_rollout_correction_caps_the_importance_weight(tiny_model_config) -> None:
    learner = Learner(
        LearnerConfig(lr=1e-3),
        tiny_model_config,
        AlgorithmConfig(rollout_correction="truncate", rollout_correction_cap=2.0),
        1.0,
    )
    # 4 of the 10 tokens have pi_prox / pi_behav = e^1.5 (above the cap of 2), 6 have e^0.2
    shifts = [[1.5, 0.2, 0.2], [1.5], [0.2, 0.2], [1.5, 0.2, 0.2, 1.5]]
    metrics = learner.train(_shifted_batch(tiny_model_config, shifts)).metrics
    assert metrics["is/clipped_frac"] == pytest.approx(0.4, abs=1e-6)
    assert metrics["is/ratio_max"] == pytest.approx(math.exp(1.5), rel=1e-4)
    assert metrics["is/ratio_mean"] == pytest.approx(0.4 * math.exp(1.5) + 0.6 * math.exp(0.2), rel=1e-4)
    assert math.isfinite(metrics["loss"])


def test_kl_in_reward_reestimates_advantages(tiny_model_config) -> None:
    learner = Learner(LearnerConfig(lr=1e-3), tiny_model_config, AlgorithmConfig(name="rloo"), 1.0)
    prepared = learner._prepare(_rich_batch())
    adv = prepared["advantages"]
    assert [len(a) for a in adv] == [3, 1, 2, 4]  # per token
    # k1 = behaviour - ref per token; with beta 0.05 the first token's advantage is the RLOO
    # advantage of the penalised sequence totals r_i - 0.05 * sum_t kl_t (group of two: r_i - r_j).
    ref = prepared["ref_logprobs"]
    totals = [r - 0.05 * float((torch.full_like(lp, -6.9) - lp).sum()) for r, lp in zip(_rich_batch().rewards, ref)]
    assert float(adv[0][0]) == pytest.approx(totals[0] - totals[1], abs=1e-5)
    assert float(adv[3][0]) == pytest.approx(totals[3] - totals[2], abs=1e-5)
    assert math.isfinite(learner.train(_rich_batch()).metrics["kl"])
    bare = TrainBatch(**{**_rich_batch(1).__dict__, "rewards": [], "group_ids": []})
    with pytest.raises(ValueError, match="rewards and group_ids"):
        learner.train(bare)


def test_constant_aggregation_needs_the_length_limit(tiny_model_config) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        Learner(LearnerConfig(), tiny_model_config, AlgorithmConfig(name="dr_grpo"), 1.0)


def test_shards_and_micro_batch_plans_by_hand() -> None:
    from actors.learner.learner import MicroBatch, micro_batch_plan, shard

    # 5 rows (10..14) over 2 ranks: bounds 10 + 5*k//2 = 10, 12, 15 -> shares of 2 and 3 rows.
    assert [shard(slice(10, 15), r, 2) for r in range(2)] == [slice(10, 12), slice(12, 15)]
    # micro_batch_size 2: the larger share needs ceil(3 / 2) = 2 micro-batches, so rank 0
    # (one real chunk) adds one padding micro-batch, a repeat of the minibatch's first row.
    assert micro_batch_plan(slice(10, 15), 0, 2, 2) == [MicroBatch(slice(10, 12)), MicroBatch(slice(10, 11), True)]
    assert micro_batch_plan(slice(10, 15), 1, 2, 2) == [MicroBatch(slice(12, 14)), MicroBatch(slice(14, 15))]
    # 5 rows over 3 ranks: bounds 0, 1, 3, 5; micro_batch_size 1 -> 2 micro-batches each.
    assert [len(micro_batch_plan(slice(0, 5), r, 3, 1)) for r in range(3)] == [2, 2, 2]
    assert micro_batch_plan(slice(0, 5), 0, 3, 1) == [MicroBatch(slice(0, 1)), MicroBatch(slice(0, 1), True)]
    # one row over 2 ranks: bounds 0, 0, 1 -> rank 0 only pads, rank 1 trains the row.
    assert micro_batch_plan(slice(0, 1), 0, 2, 4) == [MicroBatch(slice(0, 1), True)]
    assert micro_batch_plan(slice(0, 1), 1, 2, 4) == [MicroBatch(slice(0, 1))]
    # one rank: plain chunks, no padding (the single-process plan).
    assert micro_batch_plan(slice(3, 8), 0, 1, 2) == [
        MicroBatch(slice(3, 5)),
        MicroBatch(slice(5, 7)),
        MicroBatch(slice(7, 8)),
    ]
    with pytest.raises(ValueError, match="rank 2 is not in a group of 2"):
        micro_batch_plan(slice(0, 4), 2, 2, 1)
    with pytest.raises(ValueError, match="no rows"):
        micro_batch_plan(slice(4, 4), 0, 2, 1)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("micro_batch_size", [1, 2, 3, 64])
def test_micro_batch_plans_cover_every_row_once_with_equal_lengths(world_size: int, micro_batch_size: int) -> None:
    from actors.learner.learner import micro_batch_plan

    for start, n in [(0, 1), (0, 2), (3, 5), (7, 9), (0, 64), (5, 65)]:
        rows = slice(start, start + n)
        plans = [micro_batch_plan(rows, r, world_size, micro_batch_size) for r in range(world_size)]
        assert len({len(p) for p in plans}) == 1  # the same number of forwards/backwards on every rank
        real = [i for p in plans for m in p if not m.padding for i in range(m.rows.start, m.rows.stop)]
        assert real == list(range(rows.start, rows.stop))  # in rank order: every row once, in order
        assert all(m.rows == slice(start, start + 1) for p in plans for m in p if m.padding)
        assert all(m.rows.stop - m.rows.start <= micro_batch_size for p in plans for m in p)
        shares = [sum(m.rows.stop - m.rows.start for m in p if not m.padding) for p in plans]
        assert max(shares) - min(shares) <= 1


def test_learner_config_rejects_bad_parallelism() -> None:
    with pytest.raises(ValueError, match="learner.world_size=2 needs learner.backend=deepspeed"):
        LearnerConfig(world_size=2, backend="torch")
    with pytest.raises(ValueError, match="offload_optimizer needs learner.backend=deepspeed"):
        LearnerConfig(offload_optimizer=True)
    with pytest.raises(ValueError, match="bundle cannot be empty"):
        LearnerConfig(world_size=2, backend="deepspeed", num_cpus=0)
    with pytest.raises(ValueError, match="two ranks on one GPU"):
        LearnerConfig(world_size=2, backend="deepspeed", num_gpus=0.5)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        LearnerConfig(world_size=0)
    ok = LearnerConfig(world_size=2, backend="deepspeed", num_gpus=1, placement_strategy="STRICT_SPREAD")
    assert ok.world_size == 2 and ok.placement_strategy == "STRICT_SPREAD"
    assert LearnerConfig(num_cpus=0).world_size == 1  # one rank may reserve nothing, as before


def _count_forwards(monkeypatch: pytest.MonkeyPatch, module: torch.nn.Module) -> list[int]:
    """A one-element counter of ``module``'s forward calls (recomputations included)."""
    calls = [0]
    forward = module.forward

    def counting(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(module, "forward", counting)
    return calls


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(tiny_model_config, monkeypatch) -> None:
    """Activation checkpointing changes memory, not math: the same gradients, with every
    decoder layer run twice per micro-batch (forward, then recomputed in the backward)."""
    grads, forwards = [], []
    for checkpointing in (False, True):
        learner = Learner(
            LearnerConfig(micro_batch_size=1, gradient_checkpointing=checkpointing),
            tiny_model_config,
            AlgorithmConfig(),
            1.0,
        )
        model = learner.backend.model
        assert model.is_gradient_checkpointing == checkpointing
        calls = _count_forwards(monkeypatch, model.model.layers[0].mlp)
        step = learner.backend.step
        learner.backend.step = lambda step=step, m=model: (
            grads.append({n: p.grad.clone() for n, p in m.named_parameters()}),
            step(),
        )[1]
        learner.train(_batch())
        forwards.append(calls[0])
    assert forwards == [2, 4]  # two micro-batches of one row; checkpointing recomputes each
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7), name
