"""The trunks a run trains: a small CNN for CPUs, a ResNet-18-like one for GPUs (the loss and miner are
``lab.experiment.make_loss_and_miner``'s, as in the other benchmarks)."""

import torch


def cnn_trunk(width):
    """Four conv blocks on 32x32 glyphs (each conv, BN, ReLU; max-pool between), global average pool: 8*width dims."""
    nn = torch.nn
    chans = [1, width, 2 * width, 4 * width, 8 * width]
    layers = []
    for i in range(4):
        layers += [
            nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
            nn.BatchNorm2d(chans[i + 1]),
            nn.ReLU(inplace=True),
        ]
        layers += [nn.MaxPool2d(2)] if i < 3 else []
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), chans[-1]


class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def resnet_trunk(width):
    """A ResNet-18 for 32x32 inputs (two basic blocks per stage, widths w, 2w, 4w, 8w): 8*width dims."""
    nn = torch.nn
    chans = [width, 2 * width, 4 * width, 8 * width]
    layers = [nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    cin = width
    for i, c in enumerate(chans):
        layers += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), chans[-1]


def make_trunk(cfg):
    return (cnn_trunk if cfg.trunk == "cnn" else resnet_trunk)(cfg.width)
