"""The automatic recipe: what a run on your own text trains, chosen from the corpus size, the time budget and
the machine's measured speed.

`run_clm.py --train_file essays/ --max_train_minutes 10 --output_dir out` names no tokenizer, model or
hyper-parameter: [`choose_recipe`] picks them, each with its reason in a few words, and every flag the user
gives (on the command line or in a recipe file) wins over the choice. It is a pure function of

- `corpus_bytes`: the UTF-8 bytes of the training split (what one pass over the data is);
- `budget_minutes`: `--max_train_minutes` (`None`: no time budget, `--max_steps` or a default decides);
- `speed`: the training speed measured at start on this machine ([`Speed`]: a cost per optimizer step that
  does not grow with the model, and a rate of FLOPs), from which the speed of any shape is estimated;

and of the values the user fixed. The rules, and the measurements behind each, are in bench/RESULTS.md
("Your own text"): a small corpus gets a small byte-level vocabulary (so each token is seen often enough),
a model sized for the budget's tokens but no larger than the corpus can teach, dropout and a strong weight
decay where the run would otherwise make many passes, Muon for the hidden matrices and the attention kernel
where the timing here says so, and a warm-up-stable-decay schedule that ends after the passes that pay on a
small corpus and whose decay the run starts early when validation stops improving (`plateau_patience`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .optim import MUON

# The shapes timed at start (the demo's model and the smallest candidate): others are estimated from them.
REFERENCE = {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 128, "vocab_size": 2048}
SMALL = {"n_layer": 2, "n_embd": 128, "n_head": 2, "n_positions": 128, "vocab_size": 2048}
# Candidate shapes, smallest first: (n_layer, n_embd, n_head, context).
SHAPES = [
    (2, 128, 2, 128),
    (4, 128, 4, 128),
    (4, 192, 4, 128),
    (4, 256, 4, 128),
    (6, 256, 4, 128),
    (6, 384, 6, 256),
    (8, 512, 8, 256),
    (12, 768, 12, 512),
]
BATCH_SEQUENCES = 16  # blocks per optimizer step
# Training tokens per non-embedding parameter. Chinchilla's 20 picks 2 x 128 for a few CPU minutes, where larger
# models learn more per minute (4 x 128 beat 4 x 256 at 1 MB and ~3 tokens a parameter, with AdamW).
TOKENS_PER_PARAMETER = 2
# And at most this many non-embedding parameters per token of the corpus: a larger model memorises a small corpus
# before it generalises (0.25 MB, 8 minutes, Muon, dropout 0.1: 4 x 128, 4.9 per token, 2.769 bits per byte;
# 4 x 256, 19.6 per token, 2.780-2.817). It gives 4 x 192 for 1 MB, where the budget alone would give 4 x 256.
PARAMETERS_PER_CORPUS_TOKEN = 5
# Muon for the hidden matrices (optim.py) when its step, timed alone, costs at most this many AdamW steps: at
# 1 MB and 8 minutes it ended 3.7% lower in bits per byte than AdamW in the same minutes although the timing
# put its step at 1.47x AdamW's (in a whole training step the difference is smaller; bench/RESULTS.md, "Your
# own text"). Where the CPU has no bf16 instructions Muon orthogonalises in fp32 (optim.Fp32Muon): 1.2-1.6x.
MUON_MAX_COST = 2.0
ADAMW = "adamw_torch_fused"
# Dropout 0 below the first number of passes (as estimated from the timing, which runs ahead of a real run by up
# to 2x), 0.1 below the second, 0.2 above. On a CPU dropout makes a step ~1.5x as long (drawing the masks), so it
# must buy more than it costs: at 1 MB (~18 passes estimated) none won (2.259 bits per byte, 2.344 with 0.2), and
# at 0.44 MB (~27, fp32) none ended at the pass limit with 5 of 8 minutes left and still won (2.558; 2.632 with
# 0.1 to the clock); at 0.25 MB (~90) 0.1 won (2.769-2.817 against 2.823 with 0.2 and 2.842 with none, which
# peaked after 5 passes).
DROPOUT_PASSES = (32, 256)
# A run with a time budget makes at most this many passes through a corpus, plus PASSES_PER_DROPOUT x its dropout
# (0.1: 40), and then stops, its learning rate decayed: past them the model memorises and validation gets worse
# for the rest of the budget. At 1 MB and no dropout the best came at ~9 passes when the schedule ended there
# (2.259 bits per byte) and at ~9 passes, 2.338, when the schedule ran on to the clock's 14 passes; at 0.25 MB
# with dropout 0.1, a 25-pass limit ended still improving (2.780), a 40-pass one kept 2.767, its best at 28.
PASSES_WITHOUT_DROPOUT = 10
PASSES_PER_DROPOUT = 300
# Weight decay: GPT-2's 0.1 where the clock ends the run before PASSES_WITHOUT_DROPOUT passes, 0.5 where the data
# would (decoupled, as AdamW and Muon apply it). A strong decay slows the first passes and keeps the model from
# memorising the later ones, and its decayed schedule ends much lower: at 8 minutes, 0.25 MB 2.767 -> 2.670 bits
# per byte, 1 MB 2.293 -> 2.212 (bench/history/your-own-text.md).
WEIGHT_DECAY = 0.1
WEIGHT_DECAY_MANY_PASSES = 0.5
EVALUATIONS = 10  # per run: enough to see a peak, few enough to keep the budget for training
MIN_STEPS, DEFAULT_STEPS = 100, 2000
# With a time budget, max_steps is this much above the steps the timing predicts: a run that steps faster than
# predicted would otherwise end early with budget left, while one that steps slower loses nothing (the schedule
# follows the clock, callbacks.ScheduleCallback). The prediction divides by the timed Muon and dropout costs, and
# the timing's Muon cost overstates its share of a whole step at 192 wide (a run made 5.7 steps/s where the
# timing predicted 6.1 for AdamW and 1.41x for Muon) and understates it at 256 (3.9 against 5.4 and 1.46x).
STEPS_MARGIN = 1.5
# The fields the recipe chooses, as run_clm.py names them (the keys of `Recipe.values`): the model's and the data's,
# the training arguments it sets as they are, and `decay_fraction`, which becomes warmup_stable_decay's kwargs.
MODEL_FIELDS = (
    "vocab_size",
    "n_layer",
    "n_embd",
    "n_head",
    "n_positions",
    "block_size",
    "dropout",
    "attn_implementation",
)
TRAINING_FIELDS = (
    "per_device_train_batch_size",
    "optim",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_steps",
    "eval_steps",
    "plateau_patience",
    "auto_bf16",
    "document_masking",
)
FIELDS = (*MODEL_FIELDS, *TRAINING_FIELDS, "decay_fraction")


@dataclass
class Recipe:
    """The chosen values (run_clm.py's field names) and, for each, why (a few words for the log and the card)."""

    values: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a user should know about the run as a whole

    def set(self, name: str, value: Any, reason: str, fixed: Mapping[str, Any]) -> Any:
        """Record `value` for `name` with its reason, unless the user fixed it (their value wins)."""
        if name in fixed:
            self.values[name], self.reasons[name] = fixed[name], "given"
        else:
            self.values[name], self.reasons[name] = value, reason
        return self.values[name]


def vocab_for(corpus_bytes: int) -> int:
    """The byte-level BPE size for a corpus: about one token type per 1 KB, a power of two in [512, 32768]."""
    return int(min(32768, max(512, 2 ** round(math.log2(max(corpus_bytes, 1) / 1024)))))


def flops_per_token(n_layer: int, n_embd: int, vocab_size: int, context: int) -> float:
    """Training FLOPs per token of a GPT-2 shape (6 per matrix weight plus attention, as `throughput` counts)."""
    return 6 * (matrix_parameters(n_layer, n_embd) + vocab_size * n_embd) + 12 * n_layer * n_embd * context


def matrix_parameters(n_layer: int, n_embd: int) -> int:
    """The weights of the attention and MLP matrices: the parameters that grow with depth and width."""
    return 12 * n_layer * n_embd**2


def parameters(n_layer: int, n_embd: int, vocab_size: int, context: int) -> int:
    """Parameters of a GPT-2 shape with tied embeddings (biases and LayerNorms included)."""
    return matrix_parameters(n_layer, n_embd) + 13 * n_layer * n_embd + (vocab_size + context) * n_embd + 2 * n_embd


@dataclass(frozen=True)
class Speed:
    """This machine's training speed: seconds per optimizer step = `step_seconds` + FLOPs / `flops_per_second`.

    A small model's step is mostly the fixed cost (Python, the optimizer's many small launches), a large
    one's mostly arithmetic, so one measured shape cannot predict both: [`measure_speed`] times two. It
    also times eager against sdpa attention (`attention`: on a CPU in bf16, eager's plain products were
    faster), a Muon step against an AdamW step (`muon_cost`: its orthogonalisation runs in bf16 where the
    hardware multiplies bf16, in fp32 elsewhere; 1.2-1.6x either way) and a step with dropout against one
    without (`dropout_cost`: drawing the masks cost 1.6x on a 2-core CPU); the rates are without dropout.
    """

    step_seconds: float
    flops_per_second: float
    muon_cost: float | None = None  # a Muon step's time over an AdamW step's (None: not measured)
    dropout_cost: float | None = None  # a step's time with dropout over one without (None: not measured)
    attention: str | None = None  # the attention implementation that timed faster, eager or sdpa (None: not timed)

    @classmethod
    def from_timings(cls, small: tuple[float, float], large: tuple[float, float]) -> Speed:
        """The speed through two timings `(FLOPs per step, seconds per step)` of a small and a large shape."""
        (small_flops, small_seconds), (large_flops, large_seconds) = small, large
        if large_seconds <= small_seconds:  # timing noise: treat the step as all arithmetic
            return cls(0.0, large_flops / large_seconds)
        rate = (large_flops - small_flops) / (large_seconds - small_seconds)
        return cls(max(0.0, small_seconds - small_flops / rate), rate)

    def tokens_per_second(self, shape: tuple[int, int, int, int], vocab: int, batch: int = BATCH_SEQUENCES) -> float:
        """Training tokens per second of a shape `(n_layer, n_embd, n_head, context)` at `batch` blocks a step."""
        n_layer, n_embd, _, context = shape
        tokens = batch * context
        arithmetic = tokens * flops_per_token(n_layer, n_embd, vocab, context) / self.flops_per_second
        return tokens / (self.step_seconds + arithmetic)


def choose_recipe(
    corpus_bytes: int,
    budget_minutes: float | None,
    speed: Speed | None,
    fixed: Mapping[str, Any] | None = None,
    bytes_per_token: float | None = None,
    validation_bytes: int | None = None,
) -> Recipe:
    """The recipe for a corpus of `corpus_bytes`, a budget and a measured speed; `fixed` are the user's values.

    `bytes_per_token` is the tokenizer's compression when it is known (a given tokenizer); otherwise the
    compression of a byte-level BPE of the chosen size is estimated. With a budget, the number of steps is
    the budget at the estimated speed; without one, `max_steps` must be fixed or `DEFAULT_STEPS` is used.
    `validation_bytes` (the held-out text) bounds the context: validation needs two blocks at least.
    """
    fixed = dict(fixed or {})
    recipe = Recipe()
    megabytes = corpus_bytes / 1e6
    vocab = recipe.set("vocab_size", vocab_for(corpus_bytes), f"corpus {megabytes:.2f} MB", fixed)
    bytes_per_token = bytes_per_token or _estimated_bytes_per_token(vocab)
    corpus_tokens = max(1, round(corpus_bytes / bytes_per_token))

    shape = _choose_shape(corpus_tokens, budget_minutes, speed, vocab, fixed)
    n_layer, n_embd, n_head, context = shape
    fits = _context_that_fits(corpus_tokens, validation_bytes and validation_bytes / bytes_per_token)
    shortened = "n_positions" not in fixed and fits < context
    if shortened:
        context = fits
        shape = (n_layer, n_embd, n_head, context)
    rate = speed.tokens_per_second(shape, vocab) if speed else None
    why_shape = (
        f"~{rate * budget_minutes * 60 / 1e6:.1f}M tokens in {budget_minutes:g} min at {rate:,.0f} tokens/s"
        if rate and budget_minutes
        else "the default shape without a time budget"
    )
    recipe.set("n_layer", n_layer, why_shape, fixed)
    recipe.set("n_embd", n_embd, why_shape, fixed)
    recipe.set("n_head", n_head, why_shape, fixed)
    why_context = "the longest context of which the text fills 20 blocks" if shortened else why_shape
    context = recipe.set("n_positions", context, why_context, fixed)
    block = recipe.set("block_size", context, "the model's context", fixed)
    if speed and speed.attention:
        recipe.set("attn_implementation", speed.attention, "the faster attention in the timing here", fixed)
    else:
        recipe.set("attn_implementation", "sdpa", "transformers' default (no timing)", fixed)
    batch = recipe.set("per_device_train_batch_size", BATCH_SEQUENCES, "16 blocks a step", fixed)

    muon_cost = speed.muon_cost if speed else None
    muon = muon_cost is not None and muon_cost <= MUON_MAX_COST
    if muon:
        why_optim = f"Muon for the hidden matrices: a step {muon_cost:.2f}x AdamW's here, fewer steps to a loss"
    elif muon_cost is None:
        why_optim = "AdamW: Muon's step cost not measured"
    else:
        why_optim = f"AdamW: a Muon step costs {muon_cost:.1f}x AdamW's here"
    recipe.set("optim", MUON if muon else ADAMW, why_optim, fixed)
    step_tokens = batch * block
    steps_per_second = speed.tokens_per_second(shape, vocab, batch) / step_tokens if rate and budget_minutes else None
    costs: dict[str, float] = {}  # what makes a step dearer than the timing's (AdamW, no dropout)
    if steps_per_second and recipe.values["optim"] == MUON and speed.muon_cost:
        costs["Muon"] = speed.muon_cost
    if "max_steps" in fixed:
        planned = fixed["max_steps"]
    elif steps_per_second:
        planned = steps_per_second / costs.get("Muon", 1.0) * budget_minutes * 60
    else:
        planned = DEFAULT_STEPS
    passes = planned * step_tokens / corpus_tokens  # without dropout, which would slow the steps
    dropout = recipe.set("dropout", _dropout_for(passes), f"corpus {megabytes:.2f} MB, ~{passes:.1f} passes", fixed)
    if "max_steps" in fixed:
        steps = recipe.set("max_steps", None, "", fixed)
    elif steps_per_second:
        if dropout and speed.dropout_cost:
            costs["dropout"] = speed.dropout_cost
            planned /= speed.dropout_cost
        steps_per_second = planned / (budget_minutes * 60)
        enough = (PASSES_WITHOUT_DROPOUT + PASSES_PER_DROPOUT * dropout) * corpus_tokens / step_tokens
        if planned > enough:  # the data ends the run, not the clock: the schedule decays by the last useful pass
            planned = steps = max(MIN_STEPS, int(enough))
            why_steps = f"~{steps * step_tokens / corpus_tokens:.0f} passes: more would memorise the corpus"
            recipe.set("max_steps", steps, f"{why_steps}; ends before the {budget_minutes:g} min", fixed)
        else:
            steps = max(MIN_STEPS, int(STEPS_MARGIN * planned))
            slower = ", ".join(f"x{cost:.2f} for {name}" for name, cost in costs.items()) or "as timed"
            why_steps = f"{budget_minutes:g} min at ~{steps_per_second:.1f} steps/s ({slower}), "
            recipe.set("max_steps", steps, why_steps + f"x{STEPS_MARGIN:g}: the clock ends it", fixed)
    else:
        steps = recipe.set("max_steps", DEFAULT_STEPS, "no time budget", fixed)
    if passes > PASSES_WITHOUT_DROPOUT:
        why_decay = f"~{passes:.0f} passes: a strong decay keeps the model from memorising the corpus"
        recipe.set("weight_decay", WEIGHT_DECAY_MANY_PASSES, why_decay, fixed)
    else:
        recipe.set("weight_decay", WEIGHT_DECAY, f"GPT-2's decay for ~{passes:.1f} passes", fixed)
    lr = 2e-3 if n_embd <= 256 else 1e-3 if n_embd <= 512 else 6e-4
    recipe.set("learning_rate", lr, f"{n_embd} wide", fixed)
    recipe.set("lr_scheduler_type", "warmup_stable_decay", "decays early on a plateau", fixed)
    recipe.set("decay_fraction", 0.4, "the last 40% of the steps", fixed)
    planned = int(min(planned, steps))  # the steps expected, before the margin
    recipe.set("warmup_steps", min(100, max(10, planned // 50)), "2% of the steps", fixed)
    recipe.set("eval_steps", max(10, planned // EVALUATIONS), f"{EVALUATIONS} evaluations", fixed)
    recipe.set("plateau_patience", 3, "3 evaluations without a better loss: anneal and stop", fixed)
    recipe.set("auto_bf16", True, "bf16 matrix products where the hardware has them: about twice as fast", fixed)
    recipe.set("document_masking", True, "each document trains from position 0, as it is generated", fixed)
    if corpus_tokens < step_tokens * 10:
        recipe.notes.append(
            f"the corpus ({corpus_bytes:,} bytes, ~{corpus_tokens:,} tokens) is tiny for training a language model: "
            f"~{steps * step_tokens / corpus_tokens:,.0f} passes; the model will mostly memorise it"
        )
    return recipe


def _dropout_for(passes: float) -> float:
    """Dropout for the passes a run will make through its data: none while they are few, more as they grow."""
    return 0.0 if passes < DROPOUT_PASSES[0] else 0.1 if passes < DROPOUT_PASSES[1] else 0.2


def _context_that_fits(corpus_tokens: int, validation_tokens: float | None) -> int:
    """The longest power-of-two context (16 at least) of which the corpus fills 20 blocks and the held-out text 2."""
    room = corpus_tokens / 20 if validation_tokens is None else min(corpus_tokens / 20, validation_tokens / 2)
    return max(16, 2 ** int(math.log2(max(room, 1))))


def _estimated_bytes_per_token(vocab: int) -> float:
    """A byte-level BPE's compression on English prose as its vocabulary grows (bench: 512 -> 2.3, 8192 -> 3.6)."""
    return 1.0 + 0.3 * math.log2(vocab / 64)


def _choose_shape(
    corpus_tokens: int,
    budget_minutes: float | None,
    speed: Speed | None,
    vocab: int,
    fixed: Mapping[str, Any],
) -> tuple[int, int, int, int]:
    """The largest candidate shape whose budget of tokens is still TOKENS_PER_PARAMETER times its non-embedding
    parameters (those that grow with depth and width; the embeddings' share of a tiny model is large), and that
    has at most PARAMETERS_PER_CORPUS_TOKEN of them for each token of the corpus."""
    default = tuple(REFERENCE[k] for k in ("n_layer", "n_embd", "n_head", "n_positions"))
    if not (budget_minutes and speed):
        chosen = default
    else:
        chosen = SHAPES[0]
        for shape in SHAPES:
            n_layer, n_embd, _, context = shape
            weights = matrix_parameters(n_layer, n_embd)
            budget_tokens = speed.tokens_per_second(shape, vocab) * budget_minutes * 60
            if (
                budget_tokens >= TOKENS_PER_PARAMETER * weights
                and weights <= PARAMETERS_PER_CORPUS_TOKEN * corpus_tokens
            ):
                chosen = shape
    names = ("n_layer", "n_embd", "n_head", "n_positions")
    return tuple(fixed.get(name, value) for name, value in zip(names, chosen, strict=True))


__all__ = [
    "ADAMW",
    "EVALUATIONS",
    "FIELDS",
    "MODEL_FIELDS",
    "MUON_MAX_COST",
    "PARAMETERS_PER_CORPUS_TOKEN",
    "PASSES_PER_DROPOUT",
    "PASSES_WITHOUT_DROPOUT",
    "REFERENCE",
    "SMALL",
    "STEPS_MARGIN",
    "Recipe",
    "Speed",
    "TRAINING_FIELDS",
    "WEIGHT_DECAY",
    "WEIGHT_DECAY_MANY_PASSES",
    "choose_recipe",
    "flops_per_token",
    "matrix_parameters",
    "parameters",
    "vocab_for",
]
