"""The promotion policy: one object that owns the accuracy budget, the gates and the choice.

A candidate is eligible when it exported faithfully (fp32 parity within tolerance, or a
quantized model agreeing with its fp32 parent at the gate, and faster than that parent in
the same benchmark) and loses at most `max_accuracy_drop` points against the teacher (judged on
the drop itself, or with `budget_on: bound` on its paired bootstrap upper bound). Among
eligible candidates the objective (default: lowest p50 latency) picks this run's pick, which
the registry then treats as the challenger of the current champion. The teacher is the
reference, not a candidate for promotion.

The budget is checked in one place, `PromotionPolicy.within_budget`; eligibility (on the split
`select_on` names), the validation gate of a pick chosen on the selection split, and `beats`
all ask it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from textcompress.errors import PolicyError

OBJECTIVES = {"latency_p50_ms": min, "latency_p95_ms": min, "size_mb": min, "accuracy": max, "throughput_per_s": max}
SPLITS = ("validation", "selection")
BUDGET_ON = ("point", "bound")  # what the budget judges: the drop itself, or its paired bootstrap upper bound
# Per split, the row fields (points) holding the drop and its bound (decisions/report.py writes them).
DROP_FIELDS = {"validation": ("accuracy_drop", "accuracy_drop_upper"),
               "selection": ("selection_accuracy_drop", "selection_accuracy_drop_upper")}
TIMED_OBJECTIVES = ("latency_p50_ms", "latency_p95_ms", "throughput_per_s")  # read from the benchmark's timing


@dataclass(frozen=True)
class PromotionPolicy:
    max_accuracy_drop: float
    objective: str = "latency_p50_ms"
    select_on: str = "validation"  # where eligibility checks the budget; validation always gates promotion
    require_significance: bool = False
    significance_level: float = 0.05
    teacher: str = "teacher"
    allow_noisy: bool = False  # benchmark.allow_noisy: act on a timed objective from a benchmark flagged noisy
    budget_on: str = "point"  # point: the drop; bound: its paired bootstrap upper bound (evaluate.bound_level)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise PolicyError(f"objective {self.objective!r} is unknown", f"use one of {sorted(OBJECTIVES)}",
                              key="promotion.objective")
        if self.select_on not in SPLITS:
            raise PolicyError(f"select_on {self.select_on!r} is unknown", f"use one of {list(SPLITS)}",
                              key="promotion.select_on")
        if self.budget_on not in BUDGET_ON:
            raise PolicyError(f"budget_on {self.budget_on!r} is unknown", f"use one of {list(BUDGET_ON)}",
                              key="promotion.budget_on")

    @classmethod
    def from_params(cls, promotion: dict, teacher: str = "teacher", allow_noisy: bool = False) -> PromotionPolicy:
        """From params["promotion"] (and params["benchmark"]["allow_noisy"]); keys the policy does not
        use (registered_model) are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"teacher", "allow_noisy"}
        return cls(**{k: v for k, v in promotion.items() if k in fields}, teacher=teacher, allow_noisy=allow_noisy)

    # -- the budget: the one check -------------------------------------------------------------

    def within_budget(self, drop: float | dict | None, split: str = "validation") -> bool:
        """At most `max_accuracy_drop` points below the teacher (an unknown drop is not). `drop` is
        points, or a report row, whose figure on `split` the budget judges (`judged_drop`)."""
        if isinstance(drop, dict):
            drop = self.judged_drop(drop, split)
        return drop is not None and drop <= self.max_accuracy_drop

    def judged_drop(self, row: dict, split: str = "validation") -> float | None:
        """The figure of `row` on `split` that the budget judges, in points: the drop, or with
        `budget_on: bound` its paired bootstrap upper bound (None when the row lacks it)."""
        point, bound = DROP_FIELDS[split]
        return row.get(bound if self.budget_on == "bound" else point)

    def over_budget_reason(self, row: dict, split: str) -> str:
        """Says which figure of `row` on `split` exceeds the budget."""
        where = "" if split == "validation" else " on the selection split"
        figure = self.judged_drop(row, split)
        if self.budget_on == "bound":
            level = row.get("drop_bound_level")
            how = f"{100 * level:g} % paired bootstrap" if level else "paired bootstrap"
            return f"accuracy drop bound {figure:.2f} points ({how}){where} exceeds the budget of {self.max_accuracy_drop}"
        return f"accuracy drop {figure:.2f} points{where} exceeds the budget of {self.max_accuracy_drop}"

    # -- eligibility and the choice ------------------------------------------------------------

    def eligibility_reasons(self, row: dict, export_report: dict) -> list[str]:
        """Why `row` may not be picked (empty when it may)."""
        if row["status"] != "ok":
            return ["failed: " + "; ".join(row.get("reasons") or ["no result"])]
        reasons = []
        if row["name"] == self.teacher:
            reasons.append("the teacher is the reference, not a compressed candidate")
        if not export_report.get("parity_ok", False):
            reasons.append(f"ONNX parity {export_report.get('parity_max_abs_diff')} exceeds {export_report.get('parity_tolerance')}")
        if "agreement_ok" in export_report and not export_report["agreement_ok"]:
            reasons.append(f"label agreement with its fp32 parent {export_report['label_agreement_with_fp32']:.4f} "
                           f"is below the gate {export_report['agreement_gate']}")
        parent = row.get("parent_latency_p50_ms")
        if parent is not None and row.get("latency_p50_ms") is not None and row["latency_p50_ms"] >= parent:
            reasons.append(f"p50 latency {row['latency_p50_ms']:.2f} ms is not below its fp32 parent's {parent:.2f} ms "
                           "(measured side by side in this run)")
        # Choosing on a selection split carved from training keeps validation for the gate alone.
        split = self.select_on
        if self.judged_drop(row, split) is None:
            what = "accuracy-drop bound" if self.budget_on == "bound" else "accuracy"
            reasons.append(f"no {split} {what} to check the budget on")
        elif not self.within_budget(row, split):
            reasons.append(self.over_budget_reason(row, split))
        return reasons

    def pick(self, rows: list[dict]) -> str | None:
        """This run's pick: the best eligible row under the objective, or None."""
        eligible = [r for r in rows if r["eligible"] and r.get(self.objective) is not None]
        if not eligible:
            return None
        best = OBJECTIVES[self.objective]
        return best(eligible, key=lambda r: r[self.objective])["name"]

    # -- promotion -----------------------------------------------------------------------------

    def validation_gate(self, row: dict) -> str | None:
        """Why the pick may not be promoted whatever the champion (None when it may): a pick chosen
        on the selection split must still be within the budget on validation."""
        if self.within_budget(row):
            return None
        figure = self.judged_drop(row)
        drop = "an unknown number of" if figure is None else f"{figure:.2f}"
        bound = " (the upper bound of the drop)" if self.budget_on == "bound" else ""
        return (f"chosen on the selection split, but {drop} points below the teacher on validation{bound}, "
                f"over the budget of {self.max_accuracy_drop}: not promoted")

    def noisy_benchmark_gate(self, noise: dict | None) -> str | None:
        """Why the pick may not be promoted on this run's timing (None when it may): a benchmark flagged
        noisy (textcompress.deploy.noise) cannot rank candidates by latency or throughput. An objective
        the timing does not decide (size_mb, accuracy) is not blocked."""
        if not (noise or {}).get("noisy") or self.allow_noisy or self.objective not in TIMED_OBJECTIVES:
            return None
        return (f"the benchmark was noisy ({'; '.join(noise['causes'])}), so its {self.objective} cannot be trusted: "
                "not promoted. Fix: rerun the benchmark on a quiet machine (`dvc repro --force --single-item benchmark`, "
                "then `textcompress run`), or set `benchmark.allow_noisy: true` in params.yaml to promote on it anyway")

    def beats(self, challenger: dict, champion: dict, paired_test: dict | None = None) -> tuple[bool, str]:
        """Does the challenger beat the current champion, both measured in the same run?
        `paired_test` (McNemar, challenger as a, champion as b, same validation rows): with
        `require_significance`, a challenger significantly less accurate than the champion loses,
        and under the accuracy objective a challenger must be significantly more accurate."""
        objective = self.objective
        if not self.within_budget(challenger):
            return False, "challenger is over the accuracy budget"
        if self.require_significance and paired_test is not None:
            alpha, p = self.significance_level, paired_test["p_value"]
            worse = paired_test["only_b_correct"] > paired_test["only_a_correct"]
            if worse and p < alpha:
                return False, f"challenger is significantly less accurate than the champion (McNemar p={p:.3g} < {alpha})"
            if objective == "accuracy" and (worse or p >= alpha):
                return False, f"the accuracy gain is not significant (McNemar p={p:.3g}, level {alpha})"
        if self.judged_drop(champion) is not None and not self.within_budget(champion):
            return True, "the current champion is now over the accuracy budget"
        a, b = challenger[objective], champion[objective]
        wins = OBJECTIVES[objective](a, b) == a and a != b
        return wins, f"{objective}: challenger {a:.4g} vs champion {b:.4g}"


def report_pick(report: dict) -> str | None:
    """The pick recorded in a candidates.json (`champion` in reports written before it was renamed)."""
    return report["pick"] if "pick" in report else report.get("champion")
