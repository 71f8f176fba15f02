"""Token-budget micro-batches (``learner.max_tokens_per_micro_batch``) take the same step as today's batching.

From the same initial weights and two batches of mixed lengths, a learner whose
micro-batches are packed by a token budget (sorted by length, uneven row
counts, each padded to its own longest row) must report the same loss and
gradient norm and reach the same weights as one that forwards each minibatch in
one micro-batch of consecutive rows (``micro_batch_size`` >= the rows: the
minibatch loss by definition, so this also checks the normalisation).

Tolerances, fp32 throughout. The two learners compute every row's log-probs
with the same operations; only the widths they pad to and the grouping of rows
differ, which changes the order of floating-point reductions (matmul blocking,
the attention softmax over padded keys, which contribute exact zeros, the sum
of the micro-batch losses and gradients), never what is summed. A sum of K terms
taken in another order differs by at most K u sum|terms| (u = 2^-24 = 6e-8, the
fp32 unit roundoff), and typically by sqrt(K) u sum|terms|, the rounding errors
having random signs. The longest reductions here run over the vocabulary
(K = 1024): at most 6e-5, typically 2e-6 of the magnitudes summed.

* Loss and gradient norm: ``RTOL = 2e-5``, 10 x the typical rounding of the
  first step and 3 x below the worst case; later steps add the effect of the
  weights' differences (below) on the forward. Measured: at most 5e-6.
* Weights: ``WEIGHT_ATOL = 0.1 lr``, a share of the learning rate, not of the
  weights. Adam moves an element by about ``lr m / (sqrt(v) + eps)``, of size
  ~lr in the first steps whatever the gradient's size: on elements whose
  gradient is near ``eps`` (1e-8) a gradient difference delta moves the update
  by up to ``lr delta / eps``, and the gradients' few-ulp differences (measured,
  after clipping to norm 1: ~1e-7, about 10 eps) can reach a share of lr there.
  Measured: at most 0.028 lr (the DeepSpeed comparison's bound, 0.1 lr, for the
  same reason). Both tolerances are far below what a split-blind normaliser does:
  loss and gradient norm off by 3 % to 90 %, weights by up to 4 lr
  (``test_tolerances_catch_a_normaliser_that_ignores_the_split``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import actors.learner.learner as learner_module
from actors.learner.data_parallel import micro_batch_plan, row_count
from actors.learner.learner import Learner, LearnerConfig
from actors.learner.objectives import sequence_lengths
from actors.learner.sequence_objectives import SequenceObjective
from actors.messages import PromptItem, RolloutResult, Sample, SequenceBatch, TrainBatch
from actors.model.loading import ModelConfig, load_causal_lm, resolve_model_path
from algorithms.config import AlgorithmConfig

LR = 1e-3
RTOL = 2e-5  # loss and gradient norm
WEIGHT_ATOL = 0.1 * LR
BUDGET = 16  # tokens: the batches below split into micro-batches of 1 to 4 rows
ROWS = 8

CASES = {  # aggregation -> algorithm
    "sequence_mean (grpo)": AlgorithmConfig(name="grpo"),
    "token_mean (dapo)": AlgorithmConfig(name="dapo"),
    "constant (dr_grpo)": AlgorithmConfig(name="dr_grpo"),
    "sequence_mean, sequence ratio (gspo, one minibatch)": AlgorithmConfig(name="gspo", num_minibatches=1),
    "proximal and reference forwards, 2 minibatches x 2 iterations": AlgorithmConfig(
        name="grpo", beta=0.1, num_iterations=2, num_minibatches=2
    ),
}


@dataclass(frozen=True)
class Step:
    loss: float
    grad_norm: float
    weights: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def batches(tiny_model_config: ModelConfig, make_train_batch) -> list[TrainBatch]:
    """Two steps' batches of ``ROWS`` sequences of 2 to 10 tokens, log-probs the initial model's plus noise."""
    model = load_causal_lm(resolve_model_path(tiny_model_config), "float32")
    return [make_train_batch(step, ROWS, model, seed=step, noise=0.3) for step in (0, 1)]


def _learner(model_config: ModelConfig, algorithm: AlgorithmConfig, budget: int | None) -> Learner:
    micro = ROWS if budget is None else 64  # today's: each minibatch in one micro-batch
    config = LearnerConfig(lr=LR, micro_batch_size=micro, max_tokens_per_micro_batch=budget)
    return Learner(config, model_config, algorithm, temperature=1.0, max_new_tokens=12)


def _run(learner: Learner, batches: list[TrainBatch]) -> list[Step]:
    steps = []
    for batch in batches:
        metrics = learner.train(batch).metrics
        weights = {k: v.detach().clone() for k, v in learner.backend.model.state_dict().items()}
        steps.append(Step(metrics["loss"], metrics["grad_norm"], weights))
    return steps


def _mismatches(got: list[Step], want: list[Step]) -> list[str]:
    failed = []
    for i, (g, w) in enumerate(zip(got, want)):
        if g.loss != pytest.approx(w.loss, rel=RTOL, abs=1e-7):
            failed.append(f"step {i} loss {g.loss} != {w.loss}")
        if g.grad_norm != pytest.approx(w.grad_norm, rel=RTOL):
            failed.append(f"step {i} grad_norm {g.grad_norm} != {w.grad_norm}")
        diff = max(float((g.weights[k] - w.weights[k]).abs().max()) for k in w.weights)
        if diff >= WEIGHT_ATOL:
            failed.append(f"step {i} weights ({diff:.2e})")
    return failed


def test_the_budget_splits_the_batches_unevenly(batches: list[TrainBatch]) -> None:
    """The premise of the comparisons: several micro-batches of different row counts, out of row order."""
    for batch in batches:
        plan = micro_batch_plan(slice(0, ROWS), 0, 1, 64, BUDGET, sequence_lengths(batch))
        sizes = [row_count(m.rows) for m in plan]
        assert len(set(sizes)) >= 2 and len(plan) >= 3, sizes
        assert any(not isinstance(m.rows, slice) for m in plan)  # rows picked by length, not in order


@pytest.mark.parametrize("case", list(CASES))
def test_token_budget_takes_the_same_step(tiny_model_config, batches: list[TrainBatch], case: str) -> None:
    algorithm = CASES[case]
    want = _run(_learner(tiny_model_config, algorithm, None), batches)
    got = _run(_learner(tiny_model_config, algorithm, BUDGET), batches)
    assert _mismatches(got, want) == []


BrokenLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def _broken_policy_loss(variant: str, plan_lengths: list[int]) -> BrokenLoss:
    """``policy_loss`` with each micro-batch normalised by its own totals, then weighted by a
    rule that ignores the budget's split: ``equal`` (1 / the plan's micro-batches),
    ``rows_over_micro_batch_size`` (gradient-accumulation style), ``row_share`` (its rows over
    the minibatch's: right for sequence means, wrong for token means)."""
    real = learner_module.policy_loss

    def policy_loss(model, tensors, algorithm, temperature, totals, *rest):
        loss, stats = real(model, tensors, algorithm, temperature, None, *rest)
        rows = len(tensors["advantages"])
        weight = {
            "equal": 1 / plan_lengths[-1],
            "rows_over_micro_batch_size": rows / 64,
            "row_share": rows / totals.sequences,
        }[variant]
        return loss * weight, stats

    return policy_loss


@pytest.mark.parametrize(
    ("case", "variant"),
    [
        ("token_mean (dapo)", "equal"),
        ("sequence_mean (grpo)", "equal"),
        ("sequence_mean (grpo)", "rows_over_micro_batch_size"),
        ("token_mean (dapo)", "row_share"),
    ],
)
def test_tolerances_catch_a_normaliser_that_ignores_the_split(
    tiny_model_config, batches: list[TrainBatch], monkeypatch: pytest.MonkeyPatch, case: str, variant: str
) -> None:
    """The comparison above fails a learner whose micro-batch weights do not follow the split."""
    algorithm = CASES[case]
    want = _run(_learner(tiny_model_config, algorithm, None), batches)  # before anything is broken
    plan_lengths: list[int] = []
    plan = learner_module.micro_batch_plan

    def recorded_plan(*args):
        micro_batches = plan(*args)
        plan_lengths.append(len(micro_batches))
        return micro_batches

    monkeypatch.setattr(learner_module, "micro_batch_plan", recorded_plan)
    monkeypatch.setattr(learner_module, "policy_loss", _broken_policy_loss(variant, plan_lengths))
    failed = _mismatches(_run(_learner(tiny_model_config, algorithm, BUDGET), batches), want)
    assert any("loss" in f for f in failed) and any("grad_norm" in f for f in failed), failed


def _sequence_batch(step: int, pairs: bool) -> SequenceBatch:
    """Rows of 3 to 24 tokens, the last 2 to 20 of them targets."""
    g = torch.Generator().manual_seed(step)
    ids = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (24, 3, 5, 4, 18, 6, 3, 9)]
    masks = [[0] * min(4, len(s) - 1) + [1] * (len(s) - min(4, len(s) - 1)) for s in ids]
    return SequenceBatch(step, ids, masks, pairs=pairs)


@pytest.mark.parametrize("name", ["sft", "simpo"])
def test_offline_token_budget_takes_the_same_step(tiny_model_config, name: str) -> None:
    """SFT (token mean) and SimPO (pairs, a mean over pairs): the same step and scores with the budget."""
    objective = SequenceObjective(name=name)
    results = []
    for micro, budget in ((64, None), (64, 48)):
        config = LearnerConfig(lr=LR, micro_batch_size=micro, max_tokens_per_micro_batch=budget)
        learner = Learner(config, tiny_model_config, AlgorithmConfig(), 1.0, objective=objective)
        steps = []
        for step in (0, 1):
            metrics = learner.train_sequences(_sequence_batch(step, objective.pairs)).metrics
            weights = {k: v.detach().clone() for k, v in learner.backend.model.state_dict().items()}
            steps.append(Step(metrics["loss"], metrics["grad_norm"], weights))
        scores = learner.score_sequences(_sequence_batch(2, False))
        results.append((steps, [s["logp_sum"] for s in scores], metrics["learner/padding_fraction"]))
    (want, want_scores, want_padding), (got, got_scores, got_padding) = results
    assert _mismatches(got, want) == []
    assert got_scores == pytest.approx(want_scores, rel=RTOL)
    assert got_padding < want_padding


def _generated() -> RolloutResult:
    """Step 0's four samples, of 3 + 3, 3 + 1, 2 + 2 and 2 + 4 tokens."""
    prompts, groups = [[1, 10, 11], [1, 12]], [[[20, 21, 2], [22]], [[23, 24], [25, 26, 27, 2]]]
    samples = []
    for p, (prompt, group) in enumerate(zip(prompts, groups)):
        item = PromptItem(prompt_id=f"p{p}", row=p, prompt_text="", prompt_token_ids=prompt)
        for i, completion in enumerate(group):
            samples.append(Sample(item, f"g{p}", i, "", completion, [-6.9] * len(completion), 0, truncated=False))
    return RolloutResult(batch_index=0, samples=samples, generate_s=0.0, worker_id=0)


@pytest.mark.parametrize(("budget", "held"), [(24, True), (23, False)])
def test_the_forward_runs_ahead_only_when_the_step_fits_one_micro_batch(
    tiny_model_config, budget: int, held: bool
) -> None:
    """Four samples, the longest of 6 tokens: one micro-batch needs 4 x 6 = 24 tokens."""
    generated = _generated()
    samples = generated.samples
    batch = TrainBatch(
        step=0,
        prompt_token_ids=[s.prompt.prompt_token_ids for s in samples],
        completion_token_ids=[s.completion_token_ids for s in samples],
        sampling_logprobs=[s.sampling_logprobs for s in samples],
        advantages=[1.0, -1.0, 0.5, -0.5],
        policy_versions=[0] * 4,
    )
    config = LearnerConfig(lr=LR, max_tokens_per_micro_batch=budget)
    learner = Learner(config, tiny_model_config, AlgorithmConfig(), temperature=0.7)
    assert (learner.forward_ahead(0, generated) > 0) == held
    metrics = learner.train(batch).metrics
    assert metrics.get("learner/forward_ahead", 0.0) == float(held)
