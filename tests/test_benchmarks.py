"""Every benchmark script runs end to end in a tiny configuration, and its outputs are what it says they are.

No timing targets here: timings are only checked to be positive numbers.
"""

import csv
import importlib
import json
import math
import sys

import numpy as np
import pytest
import torch


@pytest.fixture
def bench():
    """Import a benchmark script, ``benchmarks.<name>``; restore torch's thread count afterwards (the scripts set
    it)."""
    threads = torch.get_num_threads()
    yield lambda name: importlib.import_module(f"benchmarks.{name}")
    torch.set_num_threads(threads)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check_outputs(out, name, capsys, rows):
    text = capsys.readouterr().out
    for row in rows:
        assert row in text, f"{row!r} missing from the printed table:\n{text}"
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{name}.md").read_text().count("|") > 10
    return read_csv(out / f"{name}.csv")


def heads_available():
    try:
        importlib.import_module("pml_divide_conquer.heads")
        return True
    except ImportError:
        return False


# one seed, 2 epochs, small batches, K=2: the accuracy benchmark's smoke-test settings
TINY_ACCURACY_RUN = ["--seeds", "1", "--epochs", "2", "--batch-size", "20", "--m", "4", "--num-learners", "2"]


def test_accuracy_benchmark_smoke(bench, tmp_path, capsys):
    losses = "triplet,arcface" if heads_available() else "triplet"
    args = [
        "--dataset",
        "digits",
        "--losses",
        losses,
        *TINY_ACCURACY_RUN,
        "--out",
        str(tmp_path),
    ]
    bench("accuracy").main(args)
    records = check_outputs(
        tmp_path,
        "accuracy_digits",
        capsys,
        ["| triplet | baseline |", "| triplet | D&C fixed |", "| triplet | D&C learned |"],
    )
    assert len(records) == 3 * len(losses.split(","))
    for r in records:
        for key in ("recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "NMI", "mean_average_precision_at_r"):
            assert 0.0 < float(r[key]) <= 1.0
        assert float(r["recall_at_1"]) <= float(r["recall_at_2"]) <= float(r["recall_at_4"]) <= float(r["recall_at_8"])
        assert float(r["recall_at_1"]) > 0.5  # trained on digits 0-4, tested on 5-9: far above chance (0.2)


def test_accuracy_benchmark_on_images_with_the_conv_trunk(bench, tmp_path, capsys):
    args = [
        "--dataset",
        "fashion",
        "--max-per-class",
        "40",
        "--losses",
        "contrastive",
        "--methods",
        "baseline,D&C fixed",
        *TINY_ACCURACY_RUN,
        "--out",
        str(tmp_path),
    ]
    bench("accuracy").main(args)
    records = check_outputs(tmp_path, "accuracy_fashion", capsys, ["| contrastive | D&C fixed |"])
    assert [r["method"] for r in records] == ["baseline", "D&C fixed"]


def test_tuning_script_runs_on_validation_classes(bench, tmp_path, capsys):
    bench("tune").main(["--seeds", "1", "--epochs", "1", "--rows", "baseline;K=2", "--out", str(tmp_path)])
    records = check_outputs(tmp_path, "tune", capsys, ["| baseline |", "| K=2 |"])
    assert {r["split"] for r in records} == {"val"} and len(records) == 2


def test_overhead_benchmark_smoke(bench, tmp_path, capsys):
    bench("overhead").main(
        [
            "--dataset",
            "digits",
            "--ks",
            "1,2",
            "--steps",
            "4",
            "--warmup",
            "1",
            "--batch-size",
            "20",
            "--m",
            "4",
            "--embedding-size",
            "16",
            "--out",
            str(tmp_path),
        ]
    )
    records = check_outputs(tmp_path, "overhead", capsys, ["| plain | 1 |", "| pml | 2 |"])
    assert [(r["loop"], int(r["K"])) for r in records] == [("plain", 1), ("plain", 2), ("pml", 1), ("pml", 2)]
    for r in records:
        assert float(r["bare_median_ms"]) > 0 and float(r["wrapper_median_ms"]) > 0
        assert math.isclose(
            float(r["ratio_of_medians"]), float(r["wrapper_median_ms"]) / float(r["bare_median_ms"]), rel_tol=1e-6
        )


def test_recluster_benchmark_smoke(bench, tmp_path, capsys):
    bench("recluster").main(
        [
            "--dataset",
            "digits",
            "--k",
            "2",
            "--sizes",
            "500,2000",
            "--dim",
            "32",
            "--repeats",
            "1",
            "--batch-size",
            "20",
            "--out",
            str(tmp_path),
        ]
    )
    records = check_outputs(tmp_path, "recluster", capsys, ["N=500 random embeddings", "N=2,000 random embeddings"])
    assert records[0]["part"] == "training set" and float(records[0]["recluster_s"]) > 0
    assert [int(r["n"]) for r in records[1:]] == [500, 2000]


def test_memory_benchmark_smoke(bench, tmp_path, capsys):
    bench("memory").main(
        [
            "--dataset",
            "digits",
            "--epochs",
            "2",
            "--num-learners",
            "2",
            "--batch-size",
            "20",
            "--variants",
            "idle,baseline,D&C learned",
            "--out",
            str(tmp_path),
        ]
    )
    records = check_outputs(tmp_path, "memory", capsys, ["| idle |", "| baseline |", "| D&C learned |"])
    peaks = {r["variant"]: float(r["peak_rss_mb"]) for r in records}
    assert set(peaks) == {"idle", "baseline", "D&C learned"}
    assert all(50 < v < 24 * 1024 for v in peaks.values())


def test_paper_protocol_dry_run(bench, tmp_path, capsys):
    sys.modules.pop("torchvision", None)
    result = bench("paper_protocol").main(["--dry-run", "--out", str(tmp_path)])
    assert "torchvision" not in sys.modules  # the dry run needs neither torchvision nor a download
    assert result["dry_run"] and result["phase"] == "full_embedding" and result["num_learners"] == 2
    assert 0.0 < result["R@1"] <= result["R@8"] <= 1.0
    saved = json.loads((tmp_path / "paper_cub_dry_run.json").read_text())
    assert saved["R@1"] == result["R@1"]
    assert "| R@1 |" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_han_npz(tmp_path_factory):
    """A tiny Han set from the two small font packages scripts/setup.sh installs."""
    from lab import datasets

    faces = [
        f
        for f in datasets.font_faces(datasets.HAN_FONT_FILES)
        if f.package in ("fonts-sawarabi-gothic", "fonts-sawarabi-mincho")
    ]
    path = tmp_path_factory.mktemp("han") / "tiny.npz"
    datasets.save_han_npz(path, fonts=faces, num_classes=60, min_faces=2, max_per_class=4, progress=False, cache=False)
    return path


TINY_SIZES = '{"num_pretrain": 20, "num_train": 20, "num_val": 5, "num_test": 15}'


def run_tiny_han(han, command, npz, out, seeds):
    """``python -m benchmarks.han COMMAND`` on the tiny Han set, tiny preset, one process."""
    args = ["--preset", "tiny", "--npz", str(npz), "--sizes", TINY_SIZES, "--seeds", str(seeds), "--jobs", "1"]
    return han.main([command, *args, "--out", str(out)])


def test_han_benchmark_gate_runs_pretraining_baseline_and_dc(bench, tmp_path, capsys, tiny_han_npz):
    han = bench("han")
    records = run_tiny_han(han, "gate", tiny_han_npz, tmp_path, seeds=2)
    rows = check_outputs(tmp_path, "han_gate_tiny", capsys, ["| margin | baseline |", "| margin | D&C (chosen) |"])
    assert len(records) == len(rows) == 4
    assert {r["method"] for r in records} == {"baseline", "dc"} and {r["seed"] for r in records} == {0, 1}
    for r in records:
        assert all(0.0 <= r[m] <= 1.0 for m in han.METRICS) and r["recall_at_1"] <= r["recall_at_8"]
    dc = [r for r in records if r["method"] == "dc"]
    assert all(r["reclusterings"] >= 1 and 0 < r["kmeans_seconds"] < r["recluster_seconds"] for r in dc)
    assert list(tmp_path.glob("pretrained_*.pt"))  # pretrained once, cached for every run
    # every finished run was kept with its setting name: `report` rebuilds the same table from the jsonl
    lines = (tmp_path / "han_runs.jsonl").read_text().splitlines()
    assert len(lines) == 4
    again = han.main(
        [
            "report",
            "--from",
            str(tmp_path / "han_runs.jsonl"),
            str(tmp_path / "han_runs.jsonl"),
            "--out",
            str(tmp_path / "report"),
        ]
    )
    assert len(again) == 4  # each (setting, seed, regime) once, though given twice
    assert (tmp_path / "report" / "han_report.md").read_text().count("| margin |") == 2
    assert sorted(r["recall_at_1"] for r in again) == sorted(r["recall_at_1"] for r in records)


def test_han_paired_difference_and_equal_tuning_budgets(bench):
    han = bench("han")
    mean, half = han.paired_difference([0.5, 0.6, 0.7], [0.4, 0.5, 0.7])
    assert mean == pytest.approx(100 * (0.1 + 0.1 + 0.0) / 3)
    d = 100 * np.array([0.1, 0.1, 0.0])
    assert half == pytest.approx(4.303 * d.std(ddof=1) / np.sqrt(3))
    assert han.format_difference(mean, half) == f"+6.7 ± {half:.1f}"
    assert han.format_difference(*han.paired_difference([0.9747], [0.9745]), digits=2) == "+0.02 (1 seed, no interval)"
    for grid in han.TUNE_ROUNDS.values():  # the baseline gets the same tuning budget as D&C
        assert len(grid["baseline"]) == len(grid["dc"])
    cfg = han.PRESETS["cpu"]
    assert cfg.but(schedule="journal").phase_epochs() == (round(cfg.epochs * 80 / 180) + 1, None)
    assert cfg.but(schedule="old").phase_epochs() == (cfg.epochs, cfg.epochs)


def test_han_reclustering_from_training_features_against_the_embedding_pass(bench, tmp_path, capsys, tiny_han_npz):
    han = bench("han")
    records = run_tiny_han(han, "reclustering", tiny_han_npz, tmp_path, seeds=1)
    out = capsys.readouterr().out
    assert "(reclustering − k-means) / pass" in out and "| D&C (chosen), from training features |" in out
    by = {r["recluster_from"]: r for r in records}
    assert set(by) == {"pass", "training"}
    n = len(han.load_splits("test", str(tiny_han_npz), "cpu", json.loads(TINY_SIZES))["train"].labels)
    dim = 8 * han.PRESETS["tiny"].width  # the tiny CNN's trunk output
    assert by["training"]["feature_memory_bytes"] == n * dim * 2 and by["pass"]["feature_memory_bytes"] == 0
    assert all(r["pass_seconds"] > 0 and r["reclusterings"] >= 1 for r in records)


def test_han_random_clusters_ablation_draws_its_clusters_at_random(bench, digits):
    """The ablation's clusters are random: not k-means, and new at every reclustering."""
    from pytorch_metric_learning import losses

    from pml_divide_conquer import (
        ClusterSampler,
        DivideConquerWrapper,
        KMeansSettings,
        Reclusterer,
        SubspaceMaskedEmbedder,
    )

    han = bench("han")
    sampler = ClusterSampler(digits.labels, batch_size=16, m=4)
    embedder = SubspaceMaskedEmbedder(16, 4, embedder=torch.nn.Linear(32, 16))
    random = han.RandomReclusterer(kmeans=KMeansSettings(seed=3))
    w = DivideConquerWrapper(losses.TripletMarginLoss(), embedder=embedder, sampler=sampler, reclusterer=random)
    assert w.reclusterer is random and w.reclusterer.settings.cluster_on == "trunk"
    emb = np.random.default_rng(0).normal(size=(len(digits.labels), 8)).astype(np.float32)
    first = w.reclusterer.cluster(emb, digits.labels, sampler.assignment, 2, 4, split=True)
    second = w.reclusterer.cluster(emb, digits.labels, sampler.assignment, 4, 4)
    assert set(np.unique(first)) == {0, 1, 2, 3} and (first != second).mean() > 0.5
    kmeans = Reclusterer(kmeans=KMeansSettings(seed=3)).cluster(emb, digits.labels, sampler.assignment, 4, 4)
    assert (first != kmeans).mean() > 0.5


def test_scale_benchmark_smoke(bench, tmp_path, capsys):
    bench("scale").main(
        [
            "--sizes",
            "3000,6000",
            "--old-up-to",
            "6000",
            "--recluster-sizes",
            "3000,6000",
            "--dim",
            "16",
            "--out",
            str(tmp_path),
        ]
    )
    records = check_outputs(tmp_path, "scale", capsys, ["#### Sampler pass", "| 6,000 |", "slope"])
    sampler = [r for r in records if r["table"] == "sampler"]
    assert {(r["planner"], int(r["K"])) for r in sampler} == {("new", 1), ("new", 8), ("old", 1), ("old", 8)}
    assert all(float(r["drawn"]) >= 0.95 * int(r["n"]) for r in sampler if r["planner"] == "new")  # every sample
    assert all(float(r["held_bytes_per_sample"]) > 0 for r in sampler)


def test_kmeans_backends_benchmark_smoke(bench, tmp_path, capsys):
    records = bench("kmeans_backends").main(
        ["--n", "3000", "--dim", "8", "--k", "4", "--niter", "10", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert len(records) == 3 and all(r["seconds"] > 0 for r in records)
    assert (tmp_path / "kmeans_backends.md").read_text().count("|") > 10


def test_han_learner_scale_is_the_copies_scale_and_the_full_learners_comes_back_at_the_phase_change(bench):
    """The wrapper copies one loss for every learner: it is built at the learners' scale, and the full learner's
    head start (full_head=) gives the full learner's copy the loss's own scale when the divide phase ends."""
    han = bench("han")
    from benchmarks.han import finetuning

    dc = han.PRESETS["tiny"].but(**han.CHOSEN, loss="arcface", learner_scale=16.0)
    loss, _, full_head = finetuning.make_loss(dc, 10, finetuning.make_schedule(dc))
    assert loss.scale == 16.0 and isinstance(full_head, han.FullLearnerScale) and full_head.scale == 64
    assert type(full_head.inner).__name__ == "ImprintedHeads"  # the library's default, as without the option
    # where the option changes nothing it is not applied: no scale (margin), no divide phase, the baseline
    for cfg in (dc.but(loss="margin"), dc.but(schedule="custom-full"), dc.but(method="baseline")):
        schedule = finetuning.make_schedule(cfg) if cfg.method == "dc" else None
        loss, _, full_head = finetuning.make_loss(cfg, 10, schedule)
        assert not isinstance(full_head, han.FullLearnerScale) and getattr(loss, "scale", 64) == 64
    with pytest.raises(ValueError, match="per-learner heads"):  # shared heads never run the full head's start
        finetuning.make_loss(dc.but(heads="shared"), 10, finetuning.make_schedule(dc))


def test_the_benchmark_page_figures_are_drawn_from_its_tables(bench, tmp_path):
    from pathlib import Path

    figures = bench("figures")
    root = Path(figures.__file__).resolve().parents[1]
    readme, page = (root / "README.md").read_text(), (root / "docs" / "benchmarks.md").read_text()
    assert [name for name, *_ in figures.headline(readme)] == ["margin", "triplet", "contrastive", "ArcFace"]
    assert figures.headline(readme)[0][1:] == (0.2, 0.5)  # README's margin row, +0.2 ± 0.5
    assert len(figures.ablation(page)) == 6 and set(figures.regime(page)) == {
        "train_classes",
        "pretrain_epochs",
        "epochs",
    }
    assert figures.delta("−0.0 ± 1.2") == (-0.0, 1.2)
    for path in figures.draw(tmp_path, readme, page):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"assets/{path.name}" in page and (root / "docs" / "assets" / path.name).exists()


def test_few_classes_benchmark_smoke_with_the_imprinted_baseline(bench, tmp_path, capsys, tiny_han_npz):
    """``python -m benchmarks.few_classes imprint`` on the tiny set: the baseline whose head is imprinted after
    epoch 5 (a pass over the BatchArrayDataset with its own collation) runs, and the table and curves are made."""
    few = bench("few_classes")
    few.main(
        [
            "imprint", "--npz", str(tiny_han_npz), "--sizes", TINY_SIZES, "--preset", "tiny", "--seeds", "1",
            "--losses", "arcface", "--regimes", "scratch", "--only", "^baseline", "--set", '{"epochs": 6}',
            "--jobs", "1", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    records = few.load(tmp_path)
    assert {r.get("imprint_epoch", 0) for r in records} == {0, 5} and all(r["epochs"] == 6 for r in records)
    assert all(0.0 <= r["recall_at_1"] <= 1.0 for r in records)
    text = (tmp_path / "few_classes_imprint.md").read_text()
    assert "baseline, head imprinted after epoch 5" in text
    assert (tmp_path / "few_classes_curves.png").stat().st_size > 0
