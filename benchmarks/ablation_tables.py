"""The ablation's stored results as a reader reads them: rows per variant, the paper's claims as paired per-seed
differences with t-intervals, and their tables (ablation.md and the run report both render these)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from scipy import stats as scipy_stats

from pipeline.evaluation.verification import far_key

FAR_TARGETS = (1e-2, 1e-3)
# The claims the issue asks the table to settle: (better, worse) variant names, when both were trained.
# The paper's ordering, URFM+APT > URFM > embedding KD > no KD, one neighbouring pair at a time, then each against no KD.
CLAIMS = (("urfm_apt", "urfm"), ("urfm", "embedding_kd"), ("embedding_kd", "no_kd"), ("urfm", "no_kd"), ("urfm_apt", "no_kd"))


def _mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ablation_rows(document: dict) -> list[dict]:
    """One row per variant on the first verification set: accuracy and TAR@FAR mean/spread over seeds, wall time."""
    set_name = document["verification_sets"][0]
    rows = []
    teacher = document["teacher"]["scores"][set_name]
    rows.append({"variant": "teacher", "seeds": 1, "accuracy_mean": teacher["accuracy"], "accuracy_std": 0.0,
                 "tar_at_far": {k: (v, 0.0) if v is not None else None for k, v in teacher["tar_at_far"].items()},
                 "train_wall_time_s": document.get("teacher_stage_wall_time_s"), "set": set_name})
    for name in document["variants"]:
        runs = [r for r in document["results"] if r["variant"] == name]
        accuracy = _mean_spread([r["scores"][set_name]["accuracy"] for r in runs])
        tar = {}
        for key in runs[0]["scores"][set_name]["tar_at_far"]:
            values = [r["scores"][set_name]["tar_at_far"][key] for r in runs]
            tar[key] = None if any(v is None for v in values) else _mean_spread(values)
        rows.append({"variant": name, "seeds": len(runs), "accuracy_mean": accuracy[0], "accuracy_std": accuracy[1], "tar_at_far": tar,
                     "train_wall_time_s": statistics.fmean(r["train_wall_time_s"] for r in runs), "set": set_name})
    return rows


def paired_difference(better: dict[int, float], worse: dict[int, float], confidence: float = 0.95) -> dict | None:
    """Mean per-seed difference (better - worse, seeds trained for both) with its t-interval, or None below 2 seeds.

    Why paired: each seed fixes the student's initial weights and batch order for every variant, so the per-seed
    difference cancels what the seed moves in both; its spread is much smaller than either variant's own."""
    seeds = sorted(set(better) & set(worse))
    if len(seeds) < 2:
        return None
    differences = [better[seed] - worse[seed] for seed in seeds]
    mean, spread = statistics.fmean(differences), statistics.stdev(differences)
    half_width = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(seeds) - 1)) * spread / math.sqrt(len(seeds))
    return {"seeds": seeds, "mean": mean, "low": mean - half_width, "high": mean + half_width, "confidence": confidence}


def claims(document: dict) -> list[dict]:
    """Each of the paper's claims on the first verification set: holds when the paired difference's interval is
    above 0, fails when it is below, and is unresolved when it spans 0 (then its half-width is the resolution here)."""
    set_name = document["verification_sets"][0]
    by_variant: dict[str, dict[int, float]] = {}
    for result in document["results"]:
        by_variant.setdefault(result["variant"], {})[result["seed"]] = result["scores"][set_name]["accuracy"]
    verdicts = []
    for better, worse in CLAIMS:
        if better in by_variant and worse in by_variant:
            paired = paired_difference(by_variant[better], by_variant[worse])
            if paired is None:
                continue
            verdict = "holds" if paired["low"] > 0 else "fails" if paired["high"] < 0 else "unresolved"
            verdicts.append({"better": better, "worse": worse, "seeds": paired["seeds"], "verdict": verdict,
                             "gap_points": 100 * paired["mean"], "low_points": 100 * paired["low"],
                             "high_points": 100 * paired["high"], "holds": verdict == "holds"})
    return verdicts


def untested_claims(trained: list[str], apt_problem: str | None) -> list[dict]:
    """The paper's claims this ablation cannot test, each with why: a variant it names was not trained (for an APT
    variant with a teacher APT does not apply to, `apt_problem` says why it cannot be)."""
    untested = []
    for better, worse in CLAIMS:
        missing = [name for name in (better, worse) if name not in trained]
        if missing:
            why = apt_problem if apt_problem and any("apt" in name for name in missing) else f"no {' or '.join(missing)} row in this profile"
            untested.append({"claim": f"{better} > {worse}", "why": why})
    return untested


def untested_text(document: dict) -> str | None:
    """One paragraph naming the claims not tested here and why (None when every claim was tested)."""
    untested = document.get("untested_claims") or []
    if not untested:
        return None
    reasons: dict[str, list[str]] = {}
    for item in untested:
        reasons.setdefault(item["why"], []).append(item["claim"])
    return "Not tested here: " + "; ".join(f"{', '.join(claims)} ({why})" for why, claims in reasons.items()) + "."


def _objective_text(variant: dict) -> str:
    parts = [f"{loss['weight']:g}·{loss['name']}" for loss in variant["losses"]]
    if variant.get("apt"):
        apt = variant["apt"]
        blocks = "all" if apt["blocks"] is None else ",".join(map(str, apt["blocks"]))
        parts.append(f"APT ({apt['num_prompts']} prompts, blocks {blocks}, {apt['teacher_margin_weight']:g}·teacher margin)")
    if variant.get("margin_weight", 1.0) > 0:
        parts.insert(0, "margin" if variant.get("margin_weight", 1.0) == 1 else f"{variant['margin_weight']:g}·margin")
    return " + ".join(parts)


def stored_ablation(ablation_dir: Path) -> dict | None:
    """The ablation document `run_ablation` wrote (rows and claims), or None when it has not written one yet."""
    path = Path(ablation_dir) / "ablation.json"
    return json.loads(path.read_text()) if path.is_file() else None


def format_table(document: dict) -> tuple[list[str], list[list[str]]]:
    """The ablation document as (header, rows) of strings: one row per variant, the teacher first."""
    rows = document["rows"]
    far_keys = [k for k in (far_key(f) for f in FAR_TARGETS) if any(r["tar_at_far"].get(k) for r in rows)]
    header = ["variant", "objective", f"accuracy % ({rows[0]['set']}, mean ± std)", *[f"TAR@FAR={k} %" for k in far_keys],
              "Δ vs no KD (points)", "train s / seed"]
    baseline = next((r["accuracy_mean"] for r in rows if r["variant"] == "no_kd"), None)
    table = []
    for row in rows:
        objective = "the teacher stage's model, shared by every variant" if row["variant"] == "teacher" else _objective_text(document["variants"][row["variant"]])
        seeds = f" (n={row['seeds']})" if row["variant"] != "teacher" else ""
        cells = [row["variant"], objective, f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}{seeds}"]
        for key in far_keys:
            value = row["tar_at_far"].get(key)
            cells.append("—" if value is None else f"{100 * value[0]:.2f} ± {100 * value[1]:.2f}")
        delta = None if baseline is None or row["variant"] in ("teacher", "no_kd") else 100 * (row["accuracy_mean"] - baseline)
        cells.append("—" if delta is None else f"{delta:+.2f}")
        cells.append("—" if row["train_wall_time_s"] is None else f"{row['train_wall_time_s']:.0f}")
        table.append(cells)
    return header, table


CLAIMS_NOTE = ("The paper's claims, each as the per-seed paired difference (one seed = the same initial weights and "
               "batches for every variant) with its 95 % t-interval; 'unresolved' means the interval spans 0, and its "
               "half-width is the smallest effect this ablation can see.")


def claims_table(document: dict) -> tuple[list[str], list[list[str]]]:
    """The claims as (header, rows) of strings, for ablation.md and the run report."""
    header = ["claim", "seeds", "paired difference (points)", "95 % interval", "verdict"]
    return header, [[f"{c['better']} > {c['worse']}", str(len(c["seeds"])), f"{c['gap_points']:+.2f}",
                     f"[{c['low_points']:+.2f}, {c['high_points']:+.2f}]", c["verdict"]] for c in document["claims"]]


def ablation_markdown(document: dict) -> str:
    header, rows = format_table(document)
    lines = [f"# Ablation: {document['run']}", "",
             f"Seeds {document['seeds']} (n per row: the seeds trained so far); every variant trains the same student from the "
             f"same initial weights per seed, on the same data, teacher and budget. Student trainings took {document['training_wall_time_s']:.0f} s "
             f"wall ({document['training_cpu_time_s']:.0f} s CPU); the teacher stage {document['teacher_stage_wall_time_s'] or 0:.0f} s wall.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if document["claims"]:
        claim_header, claim_rows = claims_table(document)
        lines += ["", CLAIMS_NOTE, "", "| " + " | ".join(claim_header) + " |", "|" + "---|" * len(claim_header)]
        lines += ["| " + " | ".join(row) + " |" for row in claim_rows]
    untested = untested_text(document)
    if untested:
        lines += ["", untested]
    return "\n".join(lines) + "\n"
