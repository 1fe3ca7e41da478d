"""The job runner: every run after the shared pretraining, in parallel processes on the CPU (one torch thread each),
one after the other on a GPU; each finished run appended to ``han_runs.jsonl``."""

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import sys

import numpy as np
import torch

from benchmarks.han.data import load_splits
from benchmarks.han.evaluation import evaluate
from benchmarks.han.finetuning import finetune
from benchmarks.han.pretraining import pretrain
from benchmarks.han.records import describe, keep_partial

_DATA = {}


def run_job(job):
    """One fine-tuning run and its evaluation (in a worker process on CPUs)."""
    cfg, split, npz, sizes, device_name, out, threads = job
    if threads:
        torch.set_num_threads(threads)
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = torch.device(device_name)
    key = (split, npz, repr(sizes), device_name)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_splits(split, npz, device, sizes)
    data = _DATA[key]
    trunk, _, _ = pretrain(cfg, data, device, out)
    trunk, embedder, seconds, stats = finetune(cfg, data, trunk.state_dict(), device)
    acc = evaluate(trunk, embedder, data["eval"], device)
    return dict(**dataclasses.asdict(cfg), split=split, train_seconds=round(seconds, 1), **stats, **acc)


def run_all(configs, args, progress_desc, names=None):
    """Run every config (after the shared pretraining); returns the records in the order of ``configs``."""
    from tqdm import tqdm

    sizes = json.loads(args.sizes) if args.sizes else None
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = load_splits(args.split, args.npz, device, sizes)
    _DATA[(args.split, args.npz, repr(sizes), args.device)] = data
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # pretraining runs alone: all cores
    for key in dict.fromkeys(c.pretrain_key() for c in configs):  # pretrain once per setting, before the workers
        cfg = next(c for c in configs if c.pretrain_key() == key)
        _, _, secs = pretrain(cfg, data, device, args.out)
        if secs:
            print(
                f"pretrained the trunk on {len(np.unique(data['pretrain'].labels))} classes in {secs:.0f} s", flush=True
            )
    torch.set_num_threads(threads)
    jobs = [(c, args.split, args.npz, sizes, args.device, args.out, 1 if args.device == "cpu" else 0) for c in configs]
    records = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=progress_desc, file=sys.stdout, disable=False)  # PML's own bars stay off
    if args.device != "cpu" or args.jobs <= 1:
        for i, job in enumerate(jobs):
            records[i] = run_job(job)
            keep_partial(records[i], args, names and names[i])
            bar.update()
            bar.write(describe(records[i]))
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
            for f in cf.as_completed(futures):
                records[futures[f]] = f.result()
                keep_partial(records[futures[f]], args, names and names[futures[f]])
                bar.update()
                bar.write(describe(records[futures[f]]))
    bar.close()
    return records
