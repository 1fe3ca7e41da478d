"""The records of runs: kept as each run finishes (``han_runs.jsonl``), named, and read back."""

import dataclasses
import json
from pathlib import Path

from benchmarks.han.config import CHOSEN, HEAD_LOSSES, Config


def keep_partial(record, args, name=None):
    """Append each finished run to ``han_runs.jsonl`` in --out, so that an interrupted run keeps what it did
    (``python -m benchmarks.han report --from`` makes a table of such files)."""
    if name:
        record["setting"] = name
    with open(Path(args.out) / "han_runs.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def describe(r):
    name = variant_name(r)
    return (
        f"  {r['loss']:11s} {name:34s} seed {r['seed']}: R@1 {100 * r['recall_at_1']:.1f}  ({r['train_seconds']:.0f} s)"
    )


def variant_name(r):
    """A name for a run that carries none (as ``table_configs`` names its variants)."""
    if r["method"] == "baseline":
        return "baseline"
    from_training = ", reclustered from training features" if r.get("recluster_from") == "training" else ""
    has_head = r["loss"] in HEAD_LOSSES
    if all(r.get(k) == v for k, v in CHOSEN.items() if has_head or k != "heads") and not r.get("random_clusters"):
        return "D&C (chosen)" + from_training
    k = "" if r["num_learners"] == CHOSEN["num_learners"] else f" K={r['num_learners']}"
    schedule = {"cvpr": "CVPR", "journal": "journal"}.get(r["schedule"], r["schedule"])
    grow = "" if r["grow"] else ", K fixed from the start"
    heads = f", {r['heads'].replace('_', '-')} heads" if has_head else ""
    random = ", random clusters" if r.get("random_clusters") else ""
    return f"D&C{k} {r['mode']}, {schedule} phases{grow}{heads}{random}{from_training}"


def load_records(paths):
    """Records of ``han_runs.jsonl`` files (one per finished run), each run (its whole Config) once, the first one
    met; the runs of one setting share one name: the first name a command gave them, else ``variant_name``."""
    fields = dataclasses.fields(Config)
    runs, names = {}, {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            # the kind of heads is no setting of a loss without one (runs with either are the same run)
            key = tuple(
                None if f.name == "heads" and r["loss"] not in HEAD_LOSSES else r.get(f.name, f.default) for f in fields
            )
            setting = tuple(v for f, v in zip(fields, key) if f.name != "seed")
            if r.get("setting"):
                names.setdefault(setting, r["setting"])
            runs.setdefault(key, (setting, r))
    records = []
    for setting, r in runs.values():
        r["setting"] = names.get(setting) or variant_name(r)
        records.append(r)
    return records
