"""The two ResNet block classes ``zennit.torchvision`` imports (isinstance checks only; see ``__init__``)."""

import torch


class BasicBlock(torch.nn.Module):
    pass


class Bottleneck(torch.nn.Module):
    pass
