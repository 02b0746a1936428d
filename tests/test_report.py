"""The offline HTML report of a multirun, rendered in a real headless browser (Debian's chromium, driven by
Selenium through chromedriver): every image loads, the curves are drawn, nothing is fetched from outside the file."""

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cfglab.aggregate import aggregate
from cfglab.ranking import pareto_front
from cfglab.sweep import sweep_grid_path
from helpers import ROOT

P_UNCONDS = (0.1, 0.2, 0.5)
WS = (0.0, 0.5, 1.0, 2.0, 4.0)


def fake_multirun(root):
    """Three finished runs as train.py leaves them: sweep.json, sample grids, .hydra config and overrides. FID falls
    then rises with w, IS rises, recall falls (the shape of the paper's trade-off)."""
    for job, p_uncond in enumerate(P_UNCONDS):
        run = root / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- module.p_uncond={p_uncond}\n- trainer.max_steps=500\n")
        (run / ".hydra" / "config.yaml").write_text(f"module:\n  p_uncond: {p_uncond}\n")
        points = []
        for w in WS:
            fid = 20 + 8 * (w - 1 - p_uncond) ** 2
            points.append({"w": w, "step": 500, "fid": fid, "is": 5 + w * (1 + p_uncond), "kid": fid / 100,
                           "precision": 0.5 + 0.1 * w, "recall": 0.6 - 0.1 * w, "accuracy": 0.8, "nfe": 100.0})
            rng = np.random.default_rng(job * 10 + int(w * 2))
            grid = sweep_grid_path(run, 500, w)
            grid.parent.mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(grid)
        (run / "sweep.json").write_text(json.dumps({"points": points}))


def test_pareto_front_keeps_the_points_nothing_beats_on_fid_and_is():
    pts = [{"fid": 10, "is": 5}, {"fid": 12, "is": 8}, {"fid": 11, "is": 4}, {"fid": 15, "is": 8}, {"fid": 9, "is": 2}]
    assert pareto_front(pts) == [0, 1, 4]


def test_report_holds_curves_table_grids_and_configs(tmp_path):
    fake_multirun(tmp_path)
    aggregate(tmp_path, wandb_mode="off")
    page = (tmp_path / "report.html").read_text()
    assert page.count('<img class="plot"') == 5 and page.count('<img class="grid"') == len(P_UNCONDS) * len(WS)
    assert "<h2>Ranking</h2>" in page  # three runs: each at its best w (FID vs NFE is the fifth plot)
    assert all(f"<h3>p_uncond={p}</h3>" in page for p in P_UNCONDS) and "p_uncond: 0.5" in page
    assert page.count("<tr") == 1 + len(P_UNCONDS) * len(WS) + 1 + len(P_UNCONDS) and 'class="pareto"' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def non_white_fraction(png: bytes) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float((pixels.min(-1) < 200).mean())


def test_report_renders_offline_in_a_real_browser(tmp_path):
    fake_multirun(tmp_path)
    aggregate(tmp_path, wandb_mode="off")
    driver = browser()
    try:
        driver.get((tmp_path / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.className, i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) == 5 + len(P_UNCONDS) * len(WS)
        assert all(done and width > 0 and height > 0 for _, done, width, height in images), images
        for plot in driver.find_elements("css selector", "img.plot"):
            assert non_white_fraction(plot.screenshot_as_png) > 0.02  # axes, lines and markers, not a blank box
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
        assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, height)
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()


@pytest.mark.slow
def test_aggregate_py_writes_the_report_for_a_single_run(tmp_path):
    fake_multirun(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "aggregate.py"), str(tmp_path / "1"), "--wandb", "off"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (tmp_path / "1" / "report.html").read_text()
    assert page.count('<img class="grid"') == len(WS) and "<h3>1</h3>" in page


def fake_ema_sweep(run):
    """evaluate.py's record of a sweep over EMA lengths: the best length shortens as w grows (0.1 at w = 0,
    0.05 from w = 1), the best pair is (0.05, 1)."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("sigma_rels: [null, 0.05, 0.1]\n")
    points = []
    for sigma_rel, best_w in ((None, 0.7), (0.05, 1.0), (0.1, 0.0)):
        for w in WS:
            fid = 20 + 8 * (w - best_w) ** 2 + (sigma_rel or 0.2) * 10
            points.append({"w": w, "step": 500, "sigma_rel": sigma_rel, "fid": fid, "is": 5 + w, "precision": 0.5,
                           "recall": 0.6, "nfe": 40.0})
    (run / "sweep.json").write_text(json.dumps({"points": points}))
    return points


def test_report_of_an_ema_sweep_has_the_heat_map_one_curve_per_length_and_the_best_pair(tmp_path):
    points = fake_ema_sweep(tmp_path / "eval")
    aggregate(tmp_path / "eval", wandb_mode="off")
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count('<img class="plot"') == 6 and 'alt="FID over (sigma_rel, w), eval' in page
    assert "<td class=\"run\">eval, sigma_rel=0.05</td>" in page.split("<h2>Ranking</h2>")[1]  # lengths ranked
    assert "best: sigma_rel=0.05, w=1 (FID 20.5)" in page
    assert "at w=0: sigma_rel=0.1 (FID 21)" in page and "at w=4: sigma_rel=0.05 (FID 92.5)" in page
    assert page.count("<tr") == 1 + len(points) + 1 + 3 and "<td class=\"run\">eval, checkpoint EMA</td>" in page
    table = (tmp_path / "eval" / "aggregate.md").read_text()
    assert "| w | eval, checkpoint EMA | eval, sigma_rel=0.05 | eval, sigma_rel=0.1 |" in table
    driver = browser()
    try:
        driver.get((tmp_path / "eval" / "report.html").as_uri())
        heat_map = driver.find_element("css selector", 'img[alt^="FID over (sigma_rel, w)"]')
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heat_map) > 0
        assert non_white_fraction(heat_map.screenshot_as_png) > 0.3  # the cells are coloured
    finally:
        driver.quit()


def fake_repeated_sweep(run, with_std=True):
    """A sweep measured on 3 paired noise sets: w = 1 has the lowest mean FID and wins 2 of the 3 repeats."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("sweep:\n  repeats: 3\n")
    points = []
    for w in WS:
        fids = [20 + 8 * (w - 1) ** 2 + d for d in ((-1.5, -0.5, 3.5) if w == 1 else (0.0, -1.0, 1.0))]
        runs = [{"fid": f, "is": 5 + w, "precision": 0.5, "recall": 0.6 - 0.1 * w} for f in fids]
        mean, std = float(np.mean(fids)), float(np.std(fids, ddof=1))
        point = {"w": w, "step": 500, "fid": mean, "is": 5 + w, "precision": 0.5, "recall": 0.6 - 0.1 * w, "nfe": 40.0}
        if with_std:
            point.update(fid_std=std, is_std=0.0, precision_std=0.0, recall_std=0.0, repeats=3, per_repeat=runs)
        points.append(point)
    (run / "sweep.json").write_text(json.dumps({"points": points}))


def test_report_of_repeated_points_has_bands_spreads_and_wins(tmp_path):
    fake_repeated_sweep(tmp_path / "rep")
    fake_repeated_sweep(tmp_path / "plain", with_std=False)
    for run in ("rep", "plain"):
        aggregate(tmp_path / run, wandb_mode="off")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<h2>Repeats</h2>" in page and "best: w=1 (FID 20.5 ± 2.6)" in page
    assert "lowest FID over the 3 repeats: w=1 in 2, w=0.5 in 1" in page
    assert "<td>20.5 &plusmn; 2.6</td>" in page
    assert "20.5 ± 2.6" in (tmp_path / "rep" / "aggregate.md").read_text()
    assert "per_repeat" not in (tmp_path / "rep" / "aggregate.csv").read_text().splitlines()[0]
    driver = browser()
    try:
        drawn = {}
        for run in ("rep", "plain"):
            driver.get((tmp_path / run / "report.html").as_uri())
            plot = driver.find_element("css selector", 'img[alt="FID vs w"]')
            pixels = np.asarray(Image.open(io.BytesIO(plot.screenshot_as_png)).convert("RGB")).astype(int)
            drawn[run] = float((np.ptp(pixels, axis=-1) > 15).mean())  # tinted: the line, and a pale band around it
        assert drawn["rep"] > 1.5 * drawn["plain"], drawn  # the band of +- 1 std is drawn
        driver.get((tmp_path / "rep" / "report.html").as_uri())
        assert "w=1 in 2" in driver.find_element("css selector", "pre.repeats").text
    finally:
        driver.quit()


def test_report_of_per_class_metrics_has_heat_maps_and_names_the_classes_losing_recall(tmp_path):
    """Class 2's recall falls from 0.9 to 0.2 as w grows, the others' by 0.1 or less."""
    run = tmp_path / "eval"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("metrics:\n  per_class: true\n")
    points = []
    for w in WS:
        recall = [0.9 - 0.02 * w, 0.85, 0.9 - 0.175 * w, 0.8 - 0.025 * w]
        per_class = [{"class": k, "n": 100, "fid": 10 + k + 5 * w * (k == 2), "precision": 0.8, "recall": r,
                      "accuracy": 0.9} for k, r in enumerate(recall)]
        points.append({"w": w, "step": 500, "fid": 10 + w, "is": 5 + w, "precision": 0.8, "recall": sum(recall) / 4,
                       "nfe": 40.0, "per_class": per_class})
    (run / "sweep.json").write_text(json.dumps({"points": points}))
    aggregate(run, wandb_mode="off")
    page = (run / "report.html").read_text()
    assert "<h2>Per class</h2>" in page and page.count('alt="per-class ') == 2
    assert "recall lost from w=0 to w=4: class 2 0.9 -&gt; 0.2, class 3 0.8 -&gt; 0.7, class 0 0.9 -&gt; 0.82" in page
    assert "per_class" not in (run / "aggregate.csv").read_text().splitlines()[0]
    driver = browser()
    try:
        driver.get((run / "report.html").as_uri())
        for alt in ("per-class FID over w", "per-class recall over w"):
            heat_map = driver.find_element("css selector", f'img[alt^="{alt}"]')
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heat_map) > 0
            assert non_white_fraction(heat_map.screenshot_as_png) > 0.3  # the cells are coloured
        assert "class 2 0.9 -> 0.2" in driver.find_element("css selector", "pre.per-class").text
    finally:
        driver.quit()
