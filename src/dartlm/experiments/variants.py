"""What `dartlm compare` can run: every method, ablation and guard as a Variant (a method and `section.key` overrides
applied through Config.set), in groups."""

from __future__ import annotations

from dataclasses import dataclass, field

from dartlm.config import ConfigError


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    overrides: dict = field(default_factory=dict)  # "section.key" -> value, on top of the demo's config
    paper: str = ""  # what it corresponds to in the DART paper
    teacher: str = ""  # the variant whose exported model of the same seed this one learns from (FQS-NTP)


QUIET = {"method.quiet_policy_weight": 1.0, "method.quiet_passes": 2, "method.quiet_loss_on": "answer"}

# The demo trains 4 epochs (500 steps of 32 on 4,000 problems) on 3-step problems (2 CoT steps after the last is
# dropped); the curricula are scaled to that: iCoT removes 8 tokens per epoch (its default; a CoT is ~13 tokens),
# Coconut has one stage per epoch and 2 thoughts per step (its GSM8K setting), CODI 6 thoughts (its default).
VARIANTS = {v.label: v for v in (
    Variant("nocot", "nocot", paper="Table 1: No-CoT"),
    Variant("cot", "cot", paper="Table 1: CoT"),
    Variant("pause", "pause", paper="Table 1: PauseFT"),
    Variant("dart", "dart", paper="Table 1: DART"),
    Variant("icot", "icot", paper="Table 1: iCoT"),
    Variant("coconut", "coconut", {"method.coconut_thoughts_per_step": 2, "method.coconut_max_stages": 2,
                                   "method.coconut_epochs_per_stage": 1.0}, paper="Table 1: Coconut"),
    Variant("codi", "codi", {"method.num_thought_tokens": 6}, paper="Table 1: CODI"),
    Variant("dart-no-st", "dart", {"method.num_thought_tokens": 0}, paper="Table 3: w/o ST"),
    Variant("dart-no-rem", "dart", {"rem.enabled": False}, paper="Table 3: w/o REM"),
    Variant("dart-lora-rem", "dart", {"rem.placement": "output"}, paper="Table 3: w/ LoRA-REM"),
    Variant("dart-no-distill", "dart", {"method.distill_weight": 0.0}, paper="Table 3: w/o L_distill"),
    # Ours: smaller distillation weights than the paper's Llama setting (20); CODI distils GPT-2 with weight 1.
    Variant("dart-lambda1", "dart", {"method.distill_weight": 1.0}, paper="ours: lambda = 1 (CODI's weight)"),
    Variant("dart-lambda5", "dart", {"method.distill_weight": 5.0}, paper="ours: lambda = 5"),
    Variant("dart-distill-y1", "dart", {"method.distill_at": "y_1"}, paper="Table 3: L_distill on y_1"),
    Variant("dart-distill-zn-answer", "dart", {"method.distill_at": "z_n_and_answer"},
            paper="Table 3: L_distill on [z_N; Y]"),
    # Ours, not the paper's: the guards against distillation collapse (methods/distill_guards.py).
    Variant("dart-student", "dart", {"method.distill_grad": "student"}, paper="ours: L_distill into REM only"),
    Variant("dart-delayed", "dart", {"method.distill_start": 0.25, "method.distill_ramp": 0.25},
            paper="ours: lambda off for 25%, ramped over 25%"),
    Variant("dart-student-delayed", "dart", {"method.distill_grad": "student", "method.distill_start": 0.25,
                                             "method.distill_ramp": 0.25}, paper="ours: both guards"),
    Variant("codi-student", "codi", {"method.num_thought_tokens": 6, "method.distill_grad": "student"},
            paper="ours: CODI, L_distill into the projection only"),
    # The token-level-thought family, scaled to the demo (the sources: thoughts of 12 tokens, 16 -> 12 -> 8 for
    # Fast Quiet-STaR, 4 talk tokens; here 6, and 8 -> 6 -> 4, as the answers are 2-3 tokens long). The policy
    # weight is 1, not the sources' 1e6: with Adam at lr 1e-2 a weight of 1e6 leaves the NLL no say in the shared
    # LoRA weights. The loss counts the answer only (as No-CoT's), so only the answer positions think in training,
    # where inference thinks: thoughts at all ~100 positions of a question cost 24x a No-CoT step. Fast
    # Quiet-STaR NTP learns from the Fast Quiet-STaR model of its seed.
    Variant("quiet-star", "quiet-star", {**QUIET, "method.quiet_n_ahead": 6, "method.quiet_n_talk": 2},
            paper="Quiet-STaR (Zelikman et al. 2024)"),
    Variant("quiet-star-w1e6", "quiet-star", {**QUIET, "method.quiet_n_ahead": 6, "method.quiet_n_talk": 2,
                                              "method.quiet_policy_weight": 1.0e6},
            paper="Quiet-STaR with the sources' policy weight 1e6"),
    Variant("fast-quiet-star", "fast-quiet-star", {**QUIET, "method.fqs_stages": [[8, 3], [6, 2], [4, 2]]},
            paper="Fast Quiet-STaR (Huang et al. 2025)"),
    Variant("fqs-ntp", "fqs-ntp", {**QUIET, "method.ntp_policy_weight": 1.0}, teacher="fast-quiet-star",
            paper="Fast Quiet-STaR NTP, as written"),
    Variant("fqs-ntp-nll", "fqs-ntp", {**QUIET, "method.ntp_policy_weight": 1.0, "method.ntp_nll_weight": 1.0},
            teacher="fast-quiet-star", paper="ours: FQS-NTP with the plain NLL added"),
)}
GROUPS = {
    "table1": ["nocot", "cot", "pause", "dart", "icot", "coconut", "codi"],
    "table3": ["dart", "dart-no-st", "dart-no-rem", "dart-lora-rem", "dart-no-distill", "dart-distill-y1",
               "dart-distill-zn-answer"],
    "demo": ["nocot", "cot", "pause", "dart"],
    "guards": ["dart", "dart-no-distill", "dart-student", "dart-delayed", "dart-student-delayed"],
    "regime": ["nocot", "cot", "pause", "dart", "dart-no-distill", "codi"],
    "quiet": ["quiet-star", "fast-quiet-star", "fqs-ntp", "fqs-ntp-nll"],
    "lambda": ["nocot", "pause", "dart", "dart-lambda5", "dart-lambda1"],
}


def resolve_variants(names: list[str]) -> list[Variant]:
    """Variant labels and group names (table1, table3, demo) -> variants, in order, without repeats; a variant
    that learns from another's model brings that one in before it."""
    labels: list[str] = []
    for name in names:
        for label in GROUPS.get(name, [name]):
            if label not in VARIANTS:
                raise ConfigError(f"unknown variant {label!r}; known: {', '.join(VARIANTS)}; groups: "
                                  f"{', '.join(GROUPS)}")
            teacher = VARIANTS[label].teacher
            for needed in ([teacher] if teacher else []) + [label]:
                if needed not in labels:
                    labels.append(needed)
    return [VARIANTS[label] for label in labels]


def sweep_variants(values: list[int]) -> list[Variant]:
    """DART with C = each value (the paper's Figure 2)."""
    return [Variant(f"dart-c{c}", "dart", {"method.num_thought_tokens": c}, paper="Figure 2") for c in values]
