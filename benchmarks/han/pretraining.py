"""Pretraining: the trunk learns to classify the pretraining classes (our stand-in for ImageNet pretraining), once
per pretraining setting, cached in the output folder."""

import os
import time
from pathlib import Path

import torch

from benchmarks.han.trunks import make_trunk


def pretrain(cfg, data, device, out):
    """The trunk, trained to classify the pretraining classes; cached in ``out`` per pretraining settings."""
    path = Path(out) / f"pretrained_{cfg.pretrain_key()}.pt"
    trunk, dim = make_trunk(cfg)
    if cfg.pretrain_epochs == 0:  # from scratch (same initial weights for every run)
        torch.manual_seed(1234)
        return make_trunk(cfg) + (0.0,)
    if path.exists():
        trunk.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return trunk, dim, 0.0
    start = time.perf_counter()
    torch.manual_seed(1234)
    ds = data["pretrain"]
    classes = int(ds.label_tensor.max()) + 1
    head = torch.nn.Linear(dim, classes)
    trunk.to(device), head.to(device)
    opt = torch.optim.Adam(list(trunk.parameters()) + list(head.parameters()), lr=cfg.pretrain_lr)
    gen = torch.Generator().manual_seed(1234)
    n, b = len(ds), cfg.pretrain_batch_size
    for _ in range(cfg.pretrain_epochs):
        trunk.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - b + 1, b):
            x, y = ds.__getitems__(perm[i : i + b])
            loss = torch.nn.functional.cross_entropy(head(trunk(x)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    trunk.cpu()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(trunk.state_dict(), tmp)
    os.replace(tmp, path)
    return trunk, dim, time.perf_counter() - start
