"""Trunk freezing (``freeze_trunk_epochs``) that composes with LR schedulers and checkpoints.

The learning rate of the trunk's parameter groups is 0 only inside each ``optimizer.step()`` of a frozen epoch
(optimizer step hooks set it and put it back), so schedulers always read and write the real learning rate and a
checkpoint saved in a frozen epoch holds it too.
"""

import weakref

import torch

LEGACY_FROZEN_LR_KEY = "pml_dc_frozen_lr"  # param-group key of checkpoints saved before 0.3 (lr 0 stored in them)


def trunk_groups(optimizers, trunk_params):
    """(optimizer, param group) pairs holding the trunk's parameters; raise if a group mixes them with others."""
    trunk = {id(p) for p in trunk_params}
    found = []
    for opt in optimizers:
        for group in opt.param_groups:
            ids = {id(p) for p in group["params"]}
            if not ids & trunk:
                continue
            if ids - trunk:
                raise ValueError(
                    "freeze_trunk_epochs sets the learning rate of the trunk's parameter groups to 0, but a parameter "
                    "group holds trunk parameters and others (e.g. the embedder's): give the trunk a group of its "
                    "own, e.g. torch.optim.Adam([{'params': trunk.parameters()}, {'params': embedder.parameters()}])"
                )
            found.append((opt, group))
    if not found:
        raise ValueError(
            "freeze_trunk_epochs needs an optimizer that holds the trunk's parameters (PML's trainers: "
            'optimizers["trunk_optimizer"]): none of the optimizers given holds them'
        )
    return found


class TrunkFreezer:
    """Zeroes the learning rate of ``groups`` during every optimizer step while ``is_frozen()`` is true.

    Examples:
        >>> freezer = TrunkFreezer(trunk_groups(optimizers, trunk.parameters()), lambda: epoch_is_frozen)
        >>> freezer.remove()  # when done
    """

    def __init__(self, groups, is_frozen):
        self.is_frozen = is_frozen
        self.handles = []
        by_optimizer = {}
        for opt, group in groups:
            # the group's position, not the dict: optimizer.load_state_dict() (a checkpoint loaded after set-up)
            # replaces the param-group dicts, and the freezing must follow to the new ones
            index = next(i for i, g in enumerate(opt.param_groups) if g is group)
            by_optimizer.setdefault(id(opt), (opt, []))[1].append(index)
            if LEGACY_FROZEN_LR_KEY in group:  # saved frozen by an older version: the real lr is kept under the key
                group["lr"] = group.pop(LEGACY_FROZEN_LR_KEY)
        me = weakref.ref(self)
        for opt, opt_groups in by_optimizer.values():
            saved = []

            def before(optimizer, args, kwargs, opt_groups=opt_groups, saved=saved):
                freezer = me()
                if freezer is None or not freezer.is_frozen():
                    return
                for group in (optimizer.param_groups[i] for i in opt_groups):
                    if LEGACY_FROZEN_LR_KEY in group:
                        group["lr"] = group.pop(LEGACY_FROZEN_LR_KEY)
                    lr = group["lr"]
                    saved.append((group, lr))
                    group["lr"] = lr * 0 if torch.is_tensor(lr) else 0.0

            def after(optimizer, args, kwargs, saved=saved):
                while saved:
                    group, lr = saved.pop()
                    group["lr"] = lr

            self.handles += [opt.register_step_pre_hook(before), opt.register_step_post_hook(after)]

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []
