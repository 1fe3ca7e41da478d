"""Many-class zero-shot retrieval on Han characters: D&C against its baseline where D&C is meant to win.

    python -m benchmarks.han gate --out bench-out                  # CPU gate: margin loss, baseline vs D&C, 3 seeds
    python -m benchmarks.han tune --out bench-out                  # tuning on the validation classes
    python -m benchmarks.han table --out bench-out                 # every variant, 4 losses, 3 seeds, test classes
    python -m benchmarks.han gate --preset gpu --device cuda --npz han.npz   # the GPU configuration
    python -m benchmarks.han reclustering --out bench-out          # embedding pass vs training features

The regime of the papers (Stanford Online Products: thousands of classes with few images each, a pretrained trunk),
scaled down (``benchmarks/setup_han.sh`` renders the data once):

1. **Pretraining**: the trunk learns to classify the pretraining classes (our stand-in for ImageNet pretraining),
   once per preset, cached in ``--out``.
2. **Fine-tuning** on the training classes, from that trunk with its BatchNorm frozen (as in the reference code):
   the *baseline* is PML's own recipe (``MetricLossOnly`` + ``MPerClassSampler`` + loss + miner); *D&C* wraps the
   same loss and miner (``ClusterSampler`` + ``DivideConquerWrapper``). Same trunk, loss, miner, m, batch size,
   epochs, learning rates and seeds.
3. **Evaluation** on unseen classes (validation classes to tune, test classes to report): R@1/2/4/8 and MAP@R on the
   full L2-normalised embedding, query = reference.

Each command prints a markdown table (mean ± std over seeds, and the paired difference to the baseline with a 95 %
t-interval over seeds) and writes ``han_<command>.md/.csv/.png`` into ``--out``. Runs go in parallel processes
(``--jobs``, one torch thread each) on the CPU, one after the other on a GPU.

The modules, in the order of a run: :mod:`.config` (a run's settings, the presets, the chosen D&C), :mod:`.data`
(the splits), :mod:`.trunks`, :mod:`.pretraining`, :mod:`.finetuning` (with the research
parts of :mod:`.ablations` and the per-epoch :mod:`.curves`), :mod:`.evaluation`; :mod:`.jobs` runs them,
:mod:`.records` keeps what they return; :mod:`.experiments` names what each command runs, :mod:`.stats`,
:mod:`.tables` and :mod:`.plots` report it; :mod:`.cli` is the command line.
"""

from benchmarks.han.ablations import ASSEMBLIES, FullLearnerScale, RandomReclusterer, RestartedHeads, imprint
from benchmarks.han.cli import main, parser
from benchmarks.han.config import CHOSEN, HEAD_LOSSES, LOSSES, METRIC_NAMES, METRICS, PRESETS, Config
from benchmarks.han.curves import curve_hooks
from benchmarks.han.data import load_splits
from benchmarks.han.evaluation import evaluate
from benchmarks.han.experiments import (
    RECLUSTER_FROM,
    SWEEP_VALUES,
    TUNE_ROUNDS,
    TUNE_SHARED,
    ablation_configs,
    gate_configs,
    reclustering_configs,
    sweep_configs,
    table_configs,
    tune_configs,
)
from benchmarks.han.finetuning import finetune
from benchmarks.han.jobs import run_all, run_job
from benchmarks.han.plots import plot
from benchmarks.han.pretraining import pretrain
from benchmarks.han.records import describe, keep_partial, load_records, variant_name
from benchmarks.han.stats import T_975, format_difference, paired_difference
from benchmarks.han.tables import reclustering_table, table
from benchmarks.han.trunks import BasicBlock, cnn_trunk, make_trunk, resnet_trunk

__all__ = [
    "ASSEMBLIES",
    "CHOSEN",
    "HEAD_LOSSES",
    "LOSSES",
    "METRICS",
    "METRIC_NAMES",
    "PRESETS",
    "RECLUSTER_FROM",
    "SWEEP_VALUES",
    "TUNE_ROUNDS",
    "TUNE_SHARED",
    "T_975",
    "BasicBlock",
    "Config",
    "FullLearnerScale",
    "RandomReclusterer",
    "RestartedHeads",
    "ablation_configs",
    "cnn_trunk",
    "curve_hooks",
    "describe",
    "evaluate",
    "finetune",
    "gate_configs",
    "imprint",
    "keep_partial",
    "load_records",
    "load_splits",
    "main",
    "make_trunk",
    "paired_difference",
    "format_difference",
    "parser",
    "plot",
    "pretrain",
    "reclustering_configs",
    "reclustering_table",
    "resnet_trunk",
    "run_all",
    "run_job",
    "sweep_configs",
    "table",
    "table_configs",
    "tune_configs",
    "variant_name",
]
