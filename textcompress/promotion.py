"""The promotion policy, as pure functions over report rows.

A candidate is eligible when it exported faithfully (fp32 parity within tolerance, or a
quantized model agreeing with its fp32 parent at the gate, and faster than that parent in
the same benchmark) and loses at most
`max_accuracy_drop` points against the teacher. Among eligible candidates the objective
(default: lowest p50 latency) picks the challenger. The teacher is the reference, not a
candidate for promotion.
"""

from __future__ import annotations

OBJECTIVES = {"latency_p50_ms": min, "latency_p95_ms": min, "size_mb": min, "accuracy": max, "throughput_per_s": max}


def eligibility_reasons(row: dict, export_report: dict, policy: dict, teacher_name: str = "teacher") -> list[str]:
    """Why `row` may not be promoted (empty when it may)."""
    if row["status"] != "ok":
        return ["failed: " + "; ".join(row.get("reasons") or ["no result"])]
    reasons = []
    if row["name"] == teacher_name:
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
    split = policy.get("select_on", "validation")
    drop = row.get("selection_accuracy_drop") if split == "selection" else row["accuracy_drop"]
    if drop is None:
        reasons.append(f"no {split} accuracy to check the budget on")
    elif drop > policy["max_accuracy_drop"]:
        where = "" if split == "validation" else " on the selection split"
        reasons.append(f"accuracy drop {drop:.2f} points{where} exceeds the budget of {policy['max_accuracy_drop']}")
    return reasons


def pick_challenger(rows: list[dict], policy: dict) -> str | None:
    """The best eligible row under the policy's objective, or None."""
    objective = policy["objective"]
    if objective not in OBJECTIVES:
        raise ValueError(f"promotion.objective {objective!r} is unknown; use one of {sorted(OBJECTIVES)}")
    eligible = [r for r in rows if r["eligible"] and r.get(objective) is not None]
    if not eligible:
        return None
    best = OBJECTIVES[objective]
    return best(eligible, key=lambda r: r[objective])["name"]


def beats(challenger: dict, champion: dict, policy: dict, paired_test: dict | None = None) -> tuple[bool, str]:
    """Does the challenger beat the current champion, both measured in the same run?
    `paired_test` (McNemar, challenger as a, champion as b, same validation rows): with
    `require_significance`, a challenger significantly less accurate than the champion loses,
    and under the accuracy objective a challenger must be significantly more accurate."""
    objective = policy["objective"]
    better = OBJECTIVES[objective]
    if challenger["accuracy_drop"] > policy["max_accuracy_drop"]:
        return False, "challenger is over the accuracy budget"
    if policy.get("require_significance") and paired_test is not None:
        alpha, p = policy.get("significance_level", 0.05), paired_test["p_value"]
        worse = paired_test["only_b_correct"] > paired_test["only_a_correct"]
        if worse and p < alpha:
            return False, f"challenger is significantly less accurate than the champion (McNemar p={p:.3g} < {alpha})"
        if objective == "accuracy" and (worse or p >= alpha):
            return False, f"the accuracy gain is not significant (McNemar p={p:.3g}, level {alpha})"
    if champion.get("accuracy_drop") is not None and champion["accuracy_drop"] > policy["max_accuracy_drop"]:
        return True, "the current champion is now over the accuracy budget"
    a, b = challenger[objective], champion[objective]
    wins = better(a, b) == a and a != b
    return wins, f"{objective}: challenger {a:.4g} vs champion {b:.4g}"
