"""The automatic recipe as a pure function of (corpus bytes, time budget, measured speed), at its edges.

The numbers the rules produce are measured in bench/RESULTS.md ("Your own text"); these tests hold what must
stay true whatever the calibration: sizes grow with the corpus and the budget, regularisation grows with the
passes, a given value always wins, and a corpus too small for the budget is said, never silent.
"""

from __future__ import annotations

import pytest

from modeling_pg_gpt2.training.recipe import (
    ADAMW,
    EVALUATIONS,
    FIELDS,
    MUON_MAX_COST,
    PARAMETERS_PER_CORPUS_TOKEN,
    PASSES_PER_DROPOUT,
    PASSES_WITHOUT_DROPOUT,
    REFERENCE,
    STEPS_MARGIN,
    WEIGHT_DECAY,
    WEIGHT_DECAY_MANY_PASSES,
    Speed,
    choose_recipe,
    matrix_parameters,
    parameters,
    vocab_for,
)

MB = 1_000_000
SPEED = Speed(step_seconds=0.02, flops_per_second=1.5e11)  # about a 2-core CPU's in fp32


def test_every_field_is_chosen_with_a_reason() -> None:
    recipe = choose_recipe(MB, 8, SPEED)
    assert set(recipe.values) == set(FIELDS) == set(recipe.reasons)
    assert all(reason and reason != "given" for reason in recipe.reasons.values())


def test_a_10_kb_corpus_gets_the_smallest_choices_and_a_warning_that_the_model_will_memorise() -> None:
    recipe = choose_recipe(10_000, 8, SPEED)
    values = recipe.values
    assert values["vocab_size"] == vocab_for(0) >= 257  # every byte and <|endoftext|> at least
    assert values["dropout"] == max(choose_recipe(size, 8, SPEED).values["dropout"] for size in (10_000, MB, 500 * MB))
    assert any("memorise" in note for note in recipe.notes)


def test_a_500_mb_corpus_gets_a_large_vocabulary_no_dropout_and_no_warning() -> None:
    recipe = choose_recipe(500 * MB, 8, SPEED)
    values = recipe.values
    assert values["vocab_size"] > choose_recipe(MB, 8, SPEED).values["vocab_size"]
    assert values["dropout"] == 0.0 and not recipe.notes  # less than one pass in 8 minutes


@pytest.mark.parametrize("corpus", [10_000, MB, 500 * MB])
def test_a_larger_budget_never_chooses_a_smaller_model_or_fewer_steps(corpus: int) -> None:
    previous = None
    for minutes in (1, 2, 4, 8, 30, 240):
        values = choose_recipe(corpus, minutes, SPEED).values
        size = parameters(values["n_layer"], values["n_embd"], values["vocab_size"], values["n_positions"])
        if previous is not None:
            assert size >= previous[0] and values["max_steps"] >= previous[1], minutes
        previous = (size, values["max_steps"])


def test_a_small_corpus_caps_the_model_that_a_large_budget_would_choose() -> None:
    fast = Speed(step_seconds=0.02, flops_per_second=4e11)  # a budget that affords 4 x 256 on any corpus
    small, large = choose_recipe(MB // 4, 8, fast).values, choose_recipe(5 * MB, 8, fast).values
    tokens = MB // 4 / 1.9  # a 512-token BPE's compression
    assert matrix_parameters(small["n_layer"], small["n_embd"]) <= PARAMETERS_PER_CORPUS_TOKEN * tokens
    assert matrix_parameters(large["n_layer"], large["n_embd"]) > matrix_parameters(small["n_layer"], small["n_embd"])


def test_a_budget_of_one_minute_still_trains_a_useful_number_of_steps() -> None:
    values = choose_recipe(MB, 1, SPEED).values
    assert values["max_steps"] >= 100 and values["eval_steps"] < values["max_steps"]
    assert values["warmup_steps"] < values["max_steps"] // 4


def test_without_a_budget_or_a_speed_the_reference_shape_and_the_default_steps() -> None:
    values = choose_recipe(MB, None, None).values
    assert (values["n_layer"], values["n_embd"], values["n_positions"]) == tuple(
        REFERENCE[name] for name in ("n_layer", "n_embd", "n_positions")
    )
    assert values["max_steps"] > 0


def test_max_steps_given_is_kept_and_decides_the_passes() -> None:
    short = choose_recipe(MB, None, None, fixed={"max_steps": 50})
    long = choose_recipe(MB, None, None, fixed={"max_steps": 50_000})
    assert short.values["max_steps"] == 50 and short.reasons["max_steps"] == "given"
    assert long.values["dropout"] > short.values["dropout"]  # many passes over 1 MB: regularise
    assert long.values["eval_steps"] > short.values["eval_steps"]


def test_every_given_value_wins_and_says_so() -> None:
    fixed = {"vocab_size": 4000, "n_layer": 3, "n_embd": 96, "learning_rate": 5e-4, "dropout": 0.3, "block_size": 64}
    fixed["optim"] = "sgd"
    recipe = choose_recipe(MB, 8, SPEED, fixed=fixed)
    for name, value in fixed.items():
        assert recipe.values[name] == value and recipe.reasons[name] == "given", name


def test_muon_where_its_measured_step_is_cheap_adamw_where_it_is_dear_or_unmeasured() -> None:
    cheap = Speed(SPEED.step_seconds, SPEED.flops_per_second, muon_cost=1.1)
    dear = Speed(SPEED.step_seconds, SPEED.flops_per_second, muon_cost=10.0)  # bf16 emulated: ~10x AdamW's
    with_muon = choose_recipe(MB, 8, cheap)
    assert with_muon.values["optim"] == "muon" and "1.10x" in with_muon.reasons["optim"]
    without = choose_recipe(MB, 8, dear)
    assert without.values["optim"] == ADAMW and "10.0x" in without.reasons["optim"]
    assert choose_recipe(MB, 8, SPEED).values["optim"] == choose_recipe(MB, None, None).values["optim"] == ADAMW
    at_the_limit = Speed(SPEED.step_seconds, SPEED.flops_per_second, muon_cost=MUON_MAX_COST)
    assert choose_recipe(MB, 8, at_the_limit).values["optim"] == "muon"


def test_the_steps_allow_for_the_measured_cost_of_dropout_and_muon_and_the_evaluations_for_the_margin() -> None:
    costly = Speed(SPEED.step_seconds, SPEED.flops_per_second, muon_cost=1.5, dropout_cost=1.6)
    for dropout in (0.0, 0.1):  # 500 MB: less than one pass, the clock ends the run
        fixed = {"dropout": dropout}
        plain = choose_recipe(500 * MB, 8, SPEED, fixed).values
        measured = choose_recipe(500 * MB, 8, costly, fixed).values
        slower = 1.5 * (1.6 if dropout else 1.0)
        assert measured["max_steps"] == pytest.approx(plain["max_steps"] / slower, rel=0.01), dropout
        # max_steps is the prediction with a margin; the evaluations are spread over the prediction
        assert measured["max_steps"] // measured["eval_steps"] == int(EVALUATIONS * STEPS_MARGIN)


def test_a_small_corpus_ends_the_run_after_the_passes_that_repay_its_dropout() -> None:
    fast = Speed(step_seconds=0.02, flops_per_second=4e11)  # ~50 estimated passes over 1 MB in 30 minutes
    tokens = MB / 2.2  # a 1024-token BPE's compression
    for dropout, passes in ((0.0, PASSES_WITHOUT_DROPOUT), (0.1, PASSES_WITHOUT_DROPOUT + 0.1 * PASSES_PER_DROPOUT)):
        recipe = choose_recipe(MB, 30, fast, fixed={"dropout": dropout})
        made = recipe.values["max_steps"] * 16 * recipe.values["block_size"] / tokens
        assert made == pytest.approx(passes, rel=0.01) and "memorise" in recipe.reasons["max_steps"], dropout
        assert recipe.values["eval_steps"] == recipe.values["max_steps"] // EVALUATIONS
    no_dropout = {"dropout": 0.0}  # more minutes then buy no more passes (without it, they buy dropout)
    assert choose_recipe(MB, 60, fast, no_dropout).values == choose_recipe(MB, 30, fast, no_dropout).values


def test_weight_decay_grows_when_the_data_not_the_clock_bounds_the_run() -> None:
    tokens = MB / 2.2  # a 1024-token BPE's compression, as in the test above
    steps = PASSES_WITHOUT_DROPOUT * tokens / (16 * 128)  # the steps of the pass limit (16 blocks of 128 a step)
    few = choose_recipe(MB, None, None, fixed={"max_steps": int(0.9 * steps)})
    many = choose_recipe(MB, None, None, fixed={"max_steps": int(1.1 * steps)})
    assert few.values["weight_decay"] == WEIGHT_DECAY < WEIGHT_DECAY_MANY_PASSES == many.values["weight_decay"]
    assert choose_recipe(500 * MB, 8, SPEED).values["weight_decay"] == WEIGHT_DECAY  # less than a pass
    assert "memorising" in many.reasons["weight_decay"]
    given = choose_recipe(MB // 4, 8, SPEED, fixed={"weight_decay": 0.0})
    assert given.values["weight_decay"] == 0.0 and given.reasons["weight_decay"] == "given"


def test_the_attention_that_timed_faster_unless_given() -> None:
    timed = Speed(SPEED.step_seconds, SPEED.flops_per_second, attention="eager")
    assert choose_recipe(MB, 8, timed).values["attn_implementation"] == "eager"
    assert choose_recipe(MB, None, None).values["attn_implementation"] == "sdpa"  # transformers' default
    given = choose_recipe(MB, 8, timed, fixed={"attn_implementation": "sdpa"})
    assert given.values["attn_implementation"] == "sdpa" and given.reasons["attn_implementation"] == "given"


def test_the_choice_is_a_pure_function() -> None:
    assert choose_recipe(3 * MB, 4, SPEED) == choose_recipe(3 * MB, 4, SPEED)


def test_the_speed_of_two_timed_shapes_predicts_a_third() -> None:
    # A machine where a step costs 10 ms plus its FLOPs at 100 GFLOP/s: the timings are made by hand.
    step_seconds, rate = 0.010, 1e11

    def timing(flops: float) -> tuple[float, float]:
        return flops, step_seconds + flops / rate

    speed = Speed.from_timings(timing(2e9), timing(4e10))
    assert speed.step_seconds == pytest.approx(step_seconds) and speed.flops_per_second == pytest.approx(rate)
    shape, vocab = (4, 192, 4, 128), 1024
    tokens = 16 * 128
    flops = tokens * (6 * (12 * 4 * 192**2 + vocab * 192) + 12 * 4 * 192 * 128)
    assert speed.tokens_per_second(shape, vocab) == pytest.approx(tokens / timing(flops)[1])


def test_a_noisy_timing_never_gives_a_negative_cost() -> None:
    speed = Speed.from_timings((1e9, 0.05), (4e10, 0.04))  # the larger shape timed faster: noise
    assert speed.step_seconds == 0.0 and speed.flops_per_second == pytest.approx(4e10 / 0.04)
