"""``bljust sweep``: grids, the choice on dev, test decoded for the chosen point only, the sensitivity summary."""

from __future__ import annotations

import json

import pytest

from bljust.cli import main as cli_main
from bljust.compare.sweep import dev_metric, grid_points, parse_grid, sensitivity, write_sweep_report
from tests.conftest import TINY


def test_a_grid_is_parsed_knob_by_knob_with_bracketed_lists_kept_whole():
    grid = parse_grid(["bljust.gamma_max=0.1, 0.3,1", "data.speed_perturb=[],[0.9,1.1]"])
    assert grid == [("bljust.gamma_max", ["0.1", "0.3", "1"]), ("data.speed_perturb", ["[]", "[0.9,1.1]"])]
    for bad in (["gamma_max=1"], ["bljust.gamma_max"], ["bljust.gamma_max="], ["a.b=1", "a.b=2"]):
        with pytest.raises(ValueError):
            parse_grid(bad)


def test_grid_points_are_the_product_or_a_seeded_sample_of_it():
    grid = parse_grid(["a.x=1,2,3", "a.y=p,q"])
    points = grid_points(grid)
    assert [p.settings for p in points][:2] == [["a.x=1", "a.y=p"], ["a.x=1", "a.y=q"]] and len(points) == 6
    assert len({p.name for p in points}) == 6 and points[0].name == "x-1_y-p"
    sample = grid_points(grid, random_points=3, seed=5)
    assert sample == grid_points(grid, random_points=3, seed=5) and len(set(sample)) == 3
    assert [points.index(p) for p in sample] == sorted(points.index(p) for p in sample)  # in grid order
    assert len(grid_points(grid, random_points=50)) == 6


def test_sensitivity_sets_each_knobs_range_against_the_seed_spread():
    grid = [("a.big", ["1", "2"]), ("a.small", ["u", "v"])]
    points = []
    for big, base in (("1", 0.30), ("2", 0.20)):  # a.big moves dev error by 10 points, a.small by 0.2
        for small, shift in (("u", 0.0), ("v", 0.002)):
            dev = [base + shift - 0.01, base + shift + 0.01]  # seed std 1.4 points
            points.append({"settings": {"a.big": big, "a.small": small}, "dev": dev, "dev_std": 0.01414})
    big, small = sensitivity(grid, points)
    assert big["range"] == pytest.approx(0.10) and big["best"] == "2" and big["verdict"].startswith("matters")
    assert small["range"] == pytest.approx(0.002) and small["verdict"].startswith("within the seed spread")
    assert big["seed_std"] == pytest.approx(0.01414)
    one_seed = [{**p, "dev": p["dev"][:1], "dev_std": None} for p in points]
    assert "one seed per point" in sensitivity(grid, one_seed)[0]["verdict"]


def test_a_sweep_chooses_on_dev_and_decodes_test_for_the_chosen_point_only(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--data", str(tiny_corpus), "--out", str(out), "--config", str(TINY), "--method", "supervised",
            "--grid", "optim.lr=0.0005,0.004", "--grid", "model.dropout=0.0", "--budget", "6", "--jobs", "2",
            "--no-progress"]
    assert cli_main(args) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in result["points"]] == ["lr-0.0005_dropout-0.0", "lr-0.004_dropout-0.0"]
    chosen = min(result["points"], key=lambda p: p["dev_mean"])
    assert result["chosen"]["name"] == chosen["name"] and result["chosen"]["settings"] == chosen["settings"]
    for p in result["points"]:
        record = json.loads((out / "points" / p["name"] / "runs" / "supervised-seed0" / "record.json").read_text())
        assert "dev" in record and ("test" in record) == (p["name"] == chosen["name"])
        assert f"optim.lr={p['settings']['optim.lr']}" in record["settings"]
    assert [r["seed"] for r in result["chosen"]["runs"]] == [0] and "test" in result["chosen"]["runs"][0]
    report = (out / "report.md").read_text()
    assert "**(chosen)**" in report and "heatmap" not in report  # model.dropout has one value: no pair to map
    assert "**optim.lr**" in report and "one seed per point" in report
    assert "**model.dropout**" in report and "one value: not varied" in report
    first = capsys.readouterr().out
    assert "chosen on" in first and f"optim.lr={chosen['settings']['optim.lr']}" in first
    mtimes = {p: p.stat().st_mtime for p in out.glob("points/*/runs/*/record.json")}
    assert cli_main(args) == 0  # a re-run reuses every run, the chosen one's test scores included
    assert {p: p.stat().st_mtime for p in out.glob("points/*/runs/*/record.json")} == mtimes
    assert result["metric"] == "dev WER with the LM (%)"  # the corpus has LM text: the default judges with it
    assert cli_main([*args, "--metric", "cer"]) == 0  # judged by greedy CER instead, without retraining
    by_cer = json.loads((out / "sweep.json").read_text())
    assert by_cer["metric"] == "dev CER (greedy, %)"
    for p in by_cer["points"]:
        record = json.loads((out / "points" / p["name"] / "runs" / "supervised-seed0" / "record.json").read_text())
        assert p["dev"] == [record["dev"]["cer"]]
    assert by_cer["chosen"]["name"] == min(by_cer["points"], key=lambda p: p["dev_mean"])["name"]


def test_dev_metric_reads_the_lm_wer_or_the_greedy_cer():
    record = {"dev": {"cer": 0.2, "wer": 0.5, "lm": {"wer": 0.3}}}
    assert dev_metric(record, "lm-wer") == 0.3 and dev_metric(record, "cer") == 0.2
    assert dev_metric({"dev": {"cer": float("nan")}}, "cer") is None and dev_metric({"dev": {"cer": 0.2}}, "lm-wer") is None


def test_the_report_maps_each_pair_of_varied_knobs_and_leaves_a_fixed_one_out(tmp_path):
    grid = [("a.x", ["1", "2"]), ("a.y", ["u", "v"]), ("a.z", ["k"])]
    points = [{"name": f"x-{x}_y-{y}_z-k", "settings": {"a.x": x, "a.y": y, "a.z": "k"}, "dev": [d, d + 0.01],
               "dev_mean": d + 0.005, "dev_std": 0.007, "train_seconds": 60.0}
              for x, y, d in (("1", "u", 0.3), ("1", "v", 0.32), ("2", "u", 0.2), ("2", "v", 0.25))]
    results = {"method": "bljust", "data": "D", "seeds": [0, 1], "metric": "dev CER (greedy, %)", "code": None,
               "budget": {"value": 10, "budget_rule": "passes", "rule_text": "equal batch passes"},
               "grid": [{"knob": k, "values": v} for k, v in grid], "points": points,
               "sensitivity": sensitivity(grid, points), "failed": [],
               "chosen": {"name": "x-2_y-u_z-k", "settings": points[2]["settings"],
                          "runs": [{"seed": 0, "test": {"wer": 0.4, "cer": 0.2, "lm": {"wer": 0.3}}}]}}
    write_sweep_report(tmp_path, results)
    report = (tmp_path / "report.md").read_text()
    assert "](heatmap-x-y.png)" in report and (tmp_path / "heatmap-x-y.png").is_file()
    assert sorted(p.name for p in tmp_path.glob("heatmap-*.png")) == ["heatmap-x-y.png"]
    assert "**a.z**: range 0.00 points against a seed spread of 0.70 — one value: not varied" in report
    assert "**a.x**" in report and "matters" in report and "| 0 | 40.00 | 20.00 | 30.00 |" in report
