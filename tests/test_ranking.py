"""Guidance methods compared at equal cost: aggregate.py ranks the runs of a multirun at each one's best w, with
NFE, seconds, the Pareto front of FID against NFE and paired differences over repeats, on hand-made runs."""

import csv
import json

import pytest

from cfglab.aggregate import aggregate
from cfglab.ranking import paired_difference, rank
from test_report import browser, non_white_fraction

WS = (0.0, 1.0, 2.0)
# method: (best w, its FID in each of 4 paired repeats, NFE per sample at w > 0)
METHODS = {
    "cfg": (1.0, [9.0, 10.0, 11.0, 10.0], 40.0),        # the leader: mean 10
    "interval": (2.0, [11.0, 9.0, 12.0, 8.8], 34.0),    # mean 10.2, differences 2, -1, 1, -1.2: within noise
    "apg": (1.0, [9.4, 10.6, 11.5, 10.5], 20.0),        # mean 10.5, differences 0.4, 0.6, 0.5, 0.5: real
    "rescale": (2.0, [10.0, 11.0, 12.0, 11.0], 40.0),   # mean 11 at the leader's NFE: off the Pareto front
}


def points_of(method):
    """A sweep of K = 4 repeats of 100 samples each: FID lowest at the method's best w, 5 higher elsewhere;
    w = 0 skips the unconditional forward (half the NFE)."""
    best_w, fids, nfe = METHODS[method]
    points = []
    for w in WS:
        per_repeat = [{"fid": f + (0 if w == best_w else 5), "seconds": 2.0} for f in fids]
        mean = sum(r["fid"] for r in per_repeat) / 4
        std = (sum((r["fid"] - mean) ** 2 for r in per_repeat) / 3) ** 0.5
        points.append({"w": w, "step": 100, "fid": mean, "fid_std": std, "is": 5.0, "precision": 0.7, "recall": 0.6,
                       "nfe": nfe / 2 if w == 0 else nfe, "num_samples": 100, "seconds": 8.0, "repeats": 4,
                       "per_repeat": per_repeat})
    return points


def fake_methods_multirun(root):
    """`evaluate.py -m guidance=cfg,interval,apg,rescale` as it leaves its job folders."""
    for job, method in enumerate(METHODS):
        run = root / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- guidance={method}\n- ckpt_path=model.ckpt\n")
        (run / ".hydra" / "config.yaml").write_text(f"guidance:\n  name: {method}\n")
        (run / "sweep.json").write_text(json.dumps({"points": points_of(method)}))


def test_paired_difference_is_the_t_interval_of_the_repeat_by_repeat_differences():
    leader, other = points_of("cfg")[1], points_of("apg")[1]
    mean, se, real = paired_difference(other, leader)
    assert mean == pytest.approx(0.5) and se == pytest.approx((0.02 / 3) ** 0.5 / 2)
    assert real  # |0.5| > t(0.975, 3) = 3.182 x 0.041
    mean, se, real = paired_difference(points_of("interval")[2], leader)
    assert mean == pytest.approx(0.2) and not real  # 3.182 x se(2, -1, 1, -1.2) = 2.4 > 0.2
    assert paired_difference({"fid": 1.0}, leader) is None  # no repeats: no paired comparison


def test_ranking_orders_by_best_fid_with_cost_and_the_pareto_front_over_nfe():
    rows = [{"run": m, **p} for m in METHODS for p in points_of(m)]
    ranked = rank(rows)
    assert [(r["run"], r["w"]) for r in ranked] == [("cfg", 1.0), ("interval", 2.0), ("apg", 1.0), ("rescale", 2.0)]
    assert [r["fid"] for r in ranked] == pytest.approx([10.0, 10.2, 10.5, 11.0])
    assert [r["nfe"] for r in ranked] == [40.0, 34.0, 20.0, 40.0]
    assert [r["pareto"] for r in ranked] == [True, True, True, False]  # rescale: the leader is better at its NFE
    assert ranked[0]["vs_best"] is None and [r["vs_best"][2] for r in ranked[1:]] == [False, True, True]
    assert ranked[0]["seconds_per_1000"] == pytest.approx(1000 * 8.0 / 400)  # 4 repeats of 100 images in 8 s


def test_aggregate_writes_the_ranking_table_csv_plot_and_report_section(tmp_path):
    fake_methods_multirun(tmp_path)
    aggregate(tmp_path, wandb_mode="off")
    table = (tmp_path / "ranking.md").read_text()
    assert "| 1 | guidance=cfg (Pareto) | 1 | 10 ± 0.82 (4 repeats) | 40 | 20 |  |" in table
    assert "| 3 | guidance=apg (Pareto) | 1 | 10.5 ± 0.86 (4 repeats) | 20 | 20 | +0.5 ± 0.041 (real) |" in table
    assert "| 4 | guidance=rescale | 2 | 11 ± 0.82 (4 repeats) | 40 | 20 | +1 ± 0 (real) |" in table
    assert "+0.2 ± 0.78 (within noise)" in table
    with open(tmp_path / "ranking.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["guidance=cfg", "guidance=interval", "guidance=apg", "guidance=rescale"]
    assert [r["real"] for r in rows] == ["", "False", "True", "True"] and rows[2]["nfe"] == "20.0"
    assert (tmp_path / "fid_vs_nfe.png").stat().st_size > 0
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Ranking</h2>" in page and page.count('<tr class="pareto"><td>') == 3
    driver = browser()
    try:
        driver.get((tmp_path / "report.html").as_uri())
        plot = driver.find_element("css selector", 'img[alt^="FID vs NFE"]')
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 0
        assert non_white_fraction(plot.screenshot_as_png) > 0.02
        cells = driver.find_elements("css selector", "table.ranking tr:nth-child(2) td")
        assert [c.text for c in cells][:4] == ["1", "guidance=cfg", "1", "10 ± 0.82 (4 repeats)"]
    finally:
        driver.quit()
