"""Research: R@1 and MAP@R on the evaluation classes during training (the RNG states kept, so a run with its curve
trains exactly as one without)."""

import time

import numpy as np
import torch

from benchmarks.han.evaluation import evaluate


def curve_hooks(cfg, trainer, trunk, embedder, data, device, wrapper):
    """Research: R@1 and MAP@R on the eval classes after every epoch (and every ``cfg.curve`` steps when > 1), the
    RNG states kept, so a run with its curve trains exactly as one without. Returns (records, iteration hook,
    end-of-epoch hook, seconds spent)."""
    records, spent = [], [0.0]

    def record(t, end_of_epoch):
        start = time.perf_counter()
        rng = torch.get_rng_state(), np.random.get_state()
        acc = evaluate(trunk, embedder, data["eval"], device)
        torch.set_rng_state(rng[0]), np.random.set_state(rng[1])
        if not end_of_epoch:
            t.set_to_train()
        phase = "baseline" if wrapper is None else str(wrapper.schedule.phase_in_epoch(t.epoch))
        step = (t.epoch - 1) * t.iterations_per_epoch + (
            t.iteration + 1 if not end_of_epoch else t.iterations_per_epoch
        )
        records.append(
            dict(
                epoch=t.epoch,
                step=step,
                end_of_epoch=end_of_epoch,
                phase=phase,
                r1=acc["recall_at_1"],
                map_at_r=acc["mean_average_precision_at_r"],
            )
        )
        spent[0] += time.perf_counter() - start
        return True

    def on_iteration(t):
        if cfg.curve > 1 and (t.iteration + 1) % cfg.curve == 0 and t.iteration + 1 < t.iterations_per_epoch:
            record(t, False)

    return records, on_iteration, (lambda t: record(t, True)), spent
