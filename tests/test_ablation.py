"""The ablation benchmark: its statistics and verdicts are right, and a tiny run writes the table and reuses finished work."""

from __future__ import annotations

import re
import statistics

import pytest

from app.ablation import run_ablation
from benchmarks.ablation_tables import ablation_rows, claims, format_table, paired_difference, stored_ablation, untested_claims, untested_text
from pipeline.config import load_config, profile_path


def document(accuracies: dict[str, list[float]]) -> dict:
    """An ablation document as run_ablation writes it, with the given per-seed accuracies."""
    variants = {name: {"losses": [] if name == "no_kd" else [{"name": "embedding_kd", "weight": 4.0, "args": {}}], "apt": None}
                for name in accuracies}
    results = [{"variant": name, "seed": seed, "train_wall_time_s": 10.0 + seed,
                "scores": {"pairs": {"accuracy": value, "tar_at_far": {"1e-2": value - 0.1, "1e-3": None}}}}
               for name, values in accuracies.items() for seed, value in enumerate(values)]
    doc = {"run": "t", "seeds": [0, 1, 2], "variants": variants, "verification_sets": ["pairs"], "results": results,
           "teacher": {"scores": {"pairs": {"accuracy": 0.95, "tar_at_far": {"1e-2": 0.9, "1e-3": None}}}},
           "teacher_stage_wall_time_s": 100.0, "wall_time_s": 1.0}
    doc["rows"] = ablation_rows(doc)
    doc["claims"] = claims(doc)
    return doc


def test_rows_hold_mean_and_sample_spread_over_seeds():
    doc = document({"no_kd": [0.70, 0.72, 0.74], "embedding_kd": [0.80, 0.81, 0.79]})
    rows = {row["variant"]: row for row in doc["rows"]}
    assert list(rows) == ["teacher", "no_kd", "embedding_kd"]
    assert rows["no_kd"]["accuracy_mean"] == pytest.approx(0.72)
    assert rows["no_kd"]["accuracy_std"] == pytest.approx(statistics.stdev([0.70, 0.72, 0.74]))
    assert rows["no_kd"]["tar_at_far"]["1e-2"][0] == pytest.approx(0.62)
    assert rows["no_kd"]["tar_at_far"]["1e-3"] is None  # unresolvable on these pairs: never averaged as a number
    assert rows["embedding_kd"]["train_wall_time_s"] == pytest.approx(11.0)


def test_paired_difference_is_the_mean_per_seed_gap_with_its_t_interval():
    paired = paired_difference({0: 0.80, 1: 0.70, 2: 0.90, 3: 0.75}, {0: 0.78, 1: 0.69, 2: 0.87, 3: 0.74, 9: 0.1})
    differences = [0.02, 0.01, 0.03, 0.01]  # seed 9 has no partner: left out
    half = 3.182446305284263 * statistics.stdev(differences) / 2  # t(0.975, 3 degrees of freedom) * s / sqrt(4)
    assert paired["seeds"] == [0, 1, 2, 3] and paired["mean"] == pytest.approx(0.0175)
    assert paired["low"] == pytest.approx(0.0175 - half) and paired["high"] == pytest.approx(0.0175 + half)
    assert paired_difference({0: 0.8}, {0: 0.7}) is None  # one seed has no spread to judge by


def test_claims_are_judged_by_the_paired_interval_not_by_the_spread_of_either_variant():
    # Seeds move both variants by 10 points, the variant adds 1 point on every seed: each row's spread is 10 points,
    # the paired difference is exactly +1 -> holds (a gap-versus-spread rule would call this noise).
    shared = [0.60, 0.70, 0.80, 0.65, 0.75]
    doc = document({"no_kd": shared, "embedding_kd": [a + 0.01 + 0.001 * i for i, a in enumerate(shared)],
                    "urfm": [a - 0.02 for a in shared], "urfm_apt": [a - 0.02 + (0.01 if i % 2 else -0.01) for i, a in enumerate(shared)]})
    verdicts = {(c["better"], c["worse"]): c for c in doc["claims"]}
    assert verdicts[("embedding_kd", "no_kd")]["verdict"] == "holds" and verdicts[("embedding_kd", "no_kd")]["holds"]
    assert verdicts[("embedding_kd", "no_kd")]["gap_points"] == pytest.approx(1.2)
    assert verdicts[("urfm", "embedding_kd")]["verdict"] == "fails"
    assert verdicts[("urfm_apt", "urfm")]["verdict"] == "unresolved"  # +-1 point from seed to seed around 0
    assert {claim["better"] + ">" + claim["worse"] for claim in doc["claims"]} == {
        "urfm_apt>urfm", "urfm>embedding_kd", "embedding_kd>no_kd", "urfm>no_kd", "urfm_apt>no_kd"}


def test_table_for_the_report_has_the_teacher_first_and_gains_over_no_kd():
    header, rows = format_table(document({"no_kd": [0.70, 0.72, 0.74], "embedding_kd": [0.80, 0.81, 0.79]}))
    assert header[2].startswith("accuracy % (pairs") and "TAR@FAR=1e-2 %" in header and "TAR@FAR=1e-3 %" not in header
    assert rows[0][0] == "teacher" and rows[0][2].startswith("95.00")
    assert rows[2][0] == "embedding_kd" and rows[2][header.index("Δ vs no KD (points)")] == "+8.00"
    assert rows[2][1] == "margin + 4·embedding_kd"


@pytest.mark.slow
def test_tiny_ablation_writes_the_table_and_reuses_finished_trainings(tmp_path):
    variants = {
        "no_kd": {"losses": []},
        "urfm_apt": {"losses": [{"name": "embedding_kd", "weight": 1.0},
                                {"name": "urfm", "weight": 1.0, "args": {"student_tap": "stages.2", "teacher_tap": "blocks.0", "grid": 7}}],
                     "apt": {"num_prompts": 2}},
    }
    config = load_config(profile_path("tiny"), {"run_name": "ablation_test", "teacher.optim.max_steps": 2, "distill.optim.max_steps": 2,
                                                "distill.ablation": {"seeds": [0, 1], "variants": variants}})
    first = run_ablation(config, tmp_path)
    ablation_dir = tmp_path / "ablation_test" / "ablation"
    assert (ablation_dir / "ablation.md").is_file()
    assert [row["variant"] for row in first["rows"]] == ["teacher", "no_kd", "urfm_apt"]
    assert all(row["seeds"] == 2 for row in first["rows"][1:])
    assert {r["summary"]["apt"] for r in first["results"] if r["variant"] == "urfm_apt"} == {True}
    stored = {path: path.stat().st_mtime_ns for path in (ablation_dir / "results").glob("*.json")}

    partial = run_ablation(config, tmp_path, ["no_kd"], [0])  # a partial rerun still tables every stored result
    assert {path: path.stat().st_mtime_ns for path in stored} == stored  # nothing retrained or rescored
    assert partial["rows"] == first["rows"] and len(partial["results"]) == 4
    header, rows = format_table(stored_ablation(ablation_dir))
    assert len(rows) == 3 and header[0] == "variant"
    untested = {item["claim"]: item["why"] for item in first["untested_claims"]}  # the tiny ViT teacher takes APT
    assert untested == {"urfm_apt > urfm": "no urfm row in this profile", "urfm > embedding_kd": "no urfm or embedding_kd row in this profile",
                        "embedding_kd > no_kd": "no embedding_kd row in this profile", "urfm > no_kd": "no urfm row in this profile"}


@pytest.mark.parametrize(("arguments", "error"), [
    (["--profile", "no_such_profile"], r"^error: .*no_such_profile\.yaml: config file not found$"),
    (["--variants", "embedding_kd,urfm_typo"], r"^error: unknown variant\(s\) urfm_typo; the profile has: no_kd, "),
    (["--seeds", "0,one"], r"^error: --seeds '0,one': expected comma-separated integers, e.g. --seeds 0,1,2$"),
])
def test_bad_input_exits_2_with_one_line_before_any_work(tmp_path, capsys, arguments, error):
    """Issue 21: every other tool exits 2 on bad input; the ablation exited 1 (and a bad --seeds was a traceback)."""
    from app.ablation import main

    assert main(["--runs-dir", str(tmp_path), *arguments]) == 2
    printed = capsys.readouterr()
    assert re.match(error, printed.err.strip()) and "\n" not in printed.err.strip(), printed.err
    assert printed.out == "" and not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_the_run_report_states_each_claim_with_its_interval_and_verdict(tmp_path):
    import json

    from benchmarks.report import _ablation_section
    from benchmarks.report_document import Document

    shared = [0.60, 0.70, 0.80]
    doc = document({"no_kd": shared, "embedding_kd": [a + 0.02 for a in shared]})
    (tmp_path / "ablation").mkdir()
    (tmp_path / "ablation" / "ablation.json").write_text(json.dumps(doc))
    report = Document("r")
    _ablation_section(report, tmp_path)
    markdown = report.to_markdown()
    assert "| embedding_kd > no_kd | 3 | +2.00 | [+2.00, +2.00] | holds |" in markdown
    assert "paired difference" in markdown and "| no_kd |" in markdown


def test_objective_text_leaves_out_a_margin_loss_that_is_off():
    from benchmarks.ablation_tables import _objective_text

    kd_alone = {"losses": [{"name": "embedding_kd", "weight": 1.0}], "apt": None, "margin_weight": 0.0}
    assert _objective_text(kd_alone) == "1·embedding_kd"
    assert _objective_text({"losses": [], "apt": None, "margin_weight": 1.0}) == "margin"
    assert _objective_text({**kd_alone, "margin_weight": 0.5}) == "0.5·margin + 1·embedding_kd"


def test_claims_an_ablation_cannot_test_are_named_with_why():
    """With a teacher APT does not apply to (EdgeFace), the APT claims say so; a row left out says it was left out."""
    why_not_apt = "APT does not apply to the teacher EdgeFace: ..."
    untested = untested_claims(["no_kd", "embedding_kd", "urfm"], why_not_apt)
    assert untested == [{"claim": "urfm_apt > urfm", "why": why_not_apt}, {"claim": "urfm_apt > no_kd", "why": why_not_apt}]
    assert untested_claims(["no_kd", "embedding_kd", "urfm", "urfm_apt"], why_not_apt) == []
    assert untested_claims(["no_kd", "urfm_apt"], None)[0] == {"claim": "urfm_apt > urfm", "why": "no urfm row in this profile"}
    text = untested_text({"untested_claims": untested})
    assert text == f"Not tested here: urfm_apt > urfm, urfm_apt > no_kd ({why_not_apt})."
    assert untested_text({"untested_claims": []}) is None and untested_text({}) is None
