"""Per-class metrics (metrics.per_class=true): each class's samples against that class's references, on the
features of the pooled metrics; the classes guidance costs recall named; refused where they cannot be measured."""

import pytest
import torch

from cfglab.config_checks import ConfigError, check_evaluate_config, check_train_config
from cfglab.data.gmm import GaussianMixtureDataModule
from cfglab.metrics.fidelity import FidelityMetrics, build_metrics
from cfglab.per_class import format_recall_losses, recall_losses
from cfglab.diffusion.guidance import CFG
from cfglab.diffusion.samplers import DDIM
from cfglab.diffusion.sampling import SamplingSettings
from cfglab.sweep import SweepRecord, SweepSettings, balanced_labels, run_points, summarize_repeats
from helpers import composed, small_module

PER_CLASS = ("fid", "precision", "recall", "accuracy")


@pytest.fixture(scope="module")
def mixture_data():
    return GaussianMixtureDataModule(num_classes=4, num_samples=4000, val_fraction=0.5)


@pytest.fixture(scope="module")
def metrics(mixture_data, tmp_path_factory):
    return build_metrics(mixture_data, extractor="exact", cache_dir=str(tmp_path_factory.mktemp("cache")),
                         reference_size=2000, per_class=True)


def generated(data, n=800, seed=1):
    """Fresh samples of the mixture itself, balanced over its classes: (points (n, 2), labels (n,))."""
    labels = balanced_labels(n, data.num_classes)
    return data.mixture.sample(labels, torch.Generator().manual_seed(seed)).float(), labels


@pytest.mark.slow
def test_per_class_metrics_are_the_pooled_metrics_of_that_class_alone(mixture_data, metrics):
    x, labels = generated(mixture_data)
    out = metrics(x, labels)
    pooled_only = FidelityMetrics(metrics.extractor, (metrics.ref_features, metrics.ref_logits, metrics.ref_labels),
                                  class_logits=True)(x, labels)
    assert {k: v for k, v in out.items() if k != "per_class"} == pooled_only  # per_class adds, changes nothing
    assert [c["class"] for c in out["per_class"]] == [0, 1, 2, 3] and all(c["n"] == 200 for c in out["per_class"])
    for k, row in enumerate(out["per_class"]):
        ref = metrics.ref_labels == k
        alone = FidelityMetrics(metrics.extractor, (metrics.ref_features[ref], metrics.ref_logits[ref],
                                                    metrics.ref_labels[ref]), class_logits=True)
        mine = labels == k
        expected = alone(x[mine], labels[mine])
        assert {m: row[m] for m in PER_CLASS} == pytest.approx({m: expected[m] for m in PER_CLASS}, rel=1e-9)
    # samples of the mixture itself: every class near the reference, FID of 200 points ~ O(D^2 / n)
    assert all(c["fid"] < 0.1 and c["recall"] > 0.8 for c in out["per_class"]), out["per_class"]


@pytest.mark.slow
def test_a_collapsed_class_has_the_worst_recall_but_not_the_worst_precision(mixture_data, metrics):
    x, labels = generated(mixture_data, seed=2)
    collapsed = labels == 2  # mode collapse: class 2's samples all within 0.02 of its mean
    x[collapsed] = mixture_data.mixture.means[2].float() + 0.02 * torch.randn(int(collapsed.sum()), 2)
    rows = metrics(x, labels)["per_class"]
    recall = [r["recall"] for r in rows]
    assert min(range(4), key=recall.__getitem__) == 2 and recall[2] < 0.2 < 0.8 < min(recall[:2] + recall[3:]), recall
    assert rows[2]["precision"] > 0.9 and rows[2]["fid"] > 10 * max(r["fid"] for r in rows if r["class"] != 2)


def point(w, recalls, step=100):
    return {"w": w, "step": step, "fid": 1.0, "per_class": [{"class": k, "n": 10, "fid": 1.0, "precision": 0.9,
                                                             "recall": r, "accuracy": 1.0} for k, r in enumerate(recalls)]}


def test_the_classes_losing_the_most_recall_are_named_and_written_to_per_class_csv(tmp_path):
    points = [point(0.0, [0.9, 0.8, 0.9, 0.7]), point(2.0, [0.85, 0.3, 0.5, 0.65]), point(1.0, [0.9, 0.6, 0.7, 0.7])]
    curve = sorted(points, key=lambda p: p["w"])
    assert [k for k, _, _ in recall_losses(curve)] == [1, 2, 0, 3]
    assert format_recall_losses(points, top=2) == ("step 100: recall lost from w=0 to w=2: class 1 0.8 -> 0.3, "
                                                   "class 2 0.9 -> 0.5")
    record = SweepRecord(tmp_path)
    for p in points:
        record.add({**p, "key": {"w": p["w"]}})
    lines = (tmp_path / "per_class.csv").read_text().splitlines()
    assert lines[0] == "step,w,class,n,fid,precision,recall,accuracy" and len(lines) == 1 + 3 * 4
    assert lines[1 + 4 * 2 + 1] == "100,2,1,10,1,0.9,0.3,1"  # sorted by w, then class
    assert "per_class" not in (tmp_path / "sweep.csv").read_text()


def test_repeats_give_every_class_its_mean_and_spread():
    runs = [{"fid": f, "seconds": 1.0, "per_class": [{"class": 0, "n": 5, "fid": f, "recall": r}]}
            for f, r in ((1.0, 0.5), (3.0, 0.7))]
    out = summarize_repeats(runs)
    (row,) = out["per_class"]
    assert row == pytest.approx({"class": 0, "n": 5, "fid": 2.0, "fid_std": 2 ** 0.5, "recall": 0.6,
                                 "recall_std": 0.02 ** 0.5})
    assert all("per_class" not in r for r in out["per_repeat"])  # each repeat's pooled metrics only


def test_per_class_on_unlabelled_data_or_too_few_samples_per_class_is_refused(tmp_path):
    one_class = GaussianMixtureDataModule(num_classes=1, num_samples=200)
    with pytest.raises(ValueError, match=r"metrics.per_class=true needs labelled data: this data set has 1 class"):
        build_metrics(one_class, extractor="exact", cache_dir=str(tmp_path / "cache"), per_class=True)
    assert not (tmp_path / "cache").exists()  # refused before any reference feature is computed
    cases = [(["data=gmm", "data.num_classes=1", "model=mlp", "metrics=exact", "metrics.per_class=true"],
              "metrics: metrics.per_class=true needs labelled data"),
             (["metrics.per_class=true", "sweep.num_samples=35"],  # 10 classes: 3 samples of class 5 and up
              "sweep.num_samples: metrics.per_class=true: class 5 has 3 samples of sweep.num_samples=35"),
             (["metrics.per_class=yes"], "metrics.per_class='yes' must be true or false")]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            check_train_config(composed("config", overrides, tmp_path / "run"))
    check_train_config(composed("config", ["metrics.per_class=true", "sweep.num_samples=40"], tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_per_class_metrics_of_a_one_class_model(tmp_path):
    from cfglab.build import build

    _, module = build(composed("config", ["data=gmm", "data.num_classes=1", "model=mlp", "metrics=exact"],
                               tmp_path / "unused"))
    torch.save({"cfglab_config": module.build_config, "state_dict": module.state_dict(), "global_step": 0},
               tmp_path / "one.ckpt")
    cfg = composed("evaluate", [f"ckpt_path={tmp_path / 'one.ckpt'}", "metrics=exact", "metrics.per_class=true"],
                   tmp_path / "run")
    with pytest.raises(ConfigError, match="metrics: metrics.per_class=true needs labelled data"):
        check_evaluate_config(cfg)
    assert not (tmp_path / "run").exists()


def test_a_point_measured_without_per_class_metrics_is_measured_again_with_them(tmp_path):
    class Counted:
        def __init__(self, per_class):
            self.per_class, self.calls = per_class, 0

        def __call__(self, images, labels):
            self.calls += 1
            return {"fid": 1.0, **({"per_class": [{"class": 0, "n": 1, "fid": 2.0}]} if self.per_class else {})}

    module, settings = small_module(), SamplingSettings().resolve("cpu", data_range=1.0)
    sweep = lambda metrics: run_points(module, SweepSettings([1.0], num_samples=4, batch_size=4), DDIM(steps=2), CFG(),  # noqa: E731
                                       settings, metrics, SweepRecord(tmp_path))
    plain, per_class = Counted(False), Counted(True)
    sweep(plain), sweep(per_class), sweep(per_class)
    assert (plain.calls, per_class.calls) == (1, 1)  # measured again once, then found in the record
    assert len(SweepRecord(tmp_path).points) == 2 and (tmp_path / "per_class.csv").is_file()
