"""Evaluation on unseen classes: R@1/2/4/8 and MAP@R on the full L2-normalised embedding, query = reference."""

import torch


@torch.no_grad()
def evaluate(trunk, embedder, ds, device, ks=(1, 2, 4, 8)):
    """R@k and MAP@R on ``ds`` (query = reference), full L2-normalised embedding, as PML's testers embed it."""
    from pytorch_metric_learning import testers
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    tester = testers.BaseTester(batch_size=512, dataloader_num_workers=0, data_device=device)
    emb, labels = tester.get_all_embeddings(ds, trunk, embedder, collate_fn=ds.collate_fn)
    labels = labels[:, 0]
    calc = AccuracyCalculator(include=("mean_average_precision_at_r",), k="max_bin_count", device=device)
    out = {"mean_average_precision_at_r": float(calc.get_accuracy(emb, labels)["mean_average_precision_at_r"])}
    x = torch.nn.functional.normalize(emb, dim=1)
    hits = {k: 0 for k in ks}
    for i in range(0, len(x), 2048):
        sim = x[i : i + 2048] @ x.t()
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + i] = -float("inf")
        match = labels[sim.topk(max(ks), dim=1).indices] == labels[i : i + 2048, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(dim=1).sum())
    out.update({f"recall_at_{k}": hits[k] / len(x) for k in ks})
    return out
