"""The five small sample architectures (see tools/build_samples.py).

Every module is written so that the legacy TorchScript exporter (opset 17, constant folding) produces
only the ops onnxfix's CNN-Fixations engine understands: no Shape/Expand/Tile/Where/Range/Dropout.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------- digits_cnn
class DigitsCNN(nn.Module):
    """Plain Conv/Relu/MaxPool stack + two fully connected layers (Gemm)."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 56 -> 28
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14 -> 7
        )
        self.fc1 = nn.Linear(48 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, n_classes)

    def forward(self, x):
        x = torch.flatten(self.features(x), 1)
        return self.fc2(F.relu(self.fc1(x)))


# ------------------------------------------------------------------------------------- resnet_shapes
def conv_bn(cin, cout, k=3, s=1, groups=1, dilation=1):
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class ResBlock(nn.Module):
    """relu(BN(f(x) + shortcut(x))).  The BatchNormalization after the Add cannot be folded into a
    Conv, so it survives the export as a real BatchNormalization node."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = conv_bn(cin, cout, 3, stride)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if (cin == cout and stride == 1) else conv_bn(cin, cout, 1, stride)
        self.bn_add = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.c2(F.relu(self.c1(x)))
        s = x if self.short is None else self.short(x)
        return F.relu(self.bn_add(y + s))


class ResNetShapes(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)  # 64 -> 32
        self.layer1 = ResBlock(16, 16, 1)  # 32
        self.layer2 = ResBlock(16, 32, 2)  # 16
        self.layer3 = ResBlock(32, 64, 2)  # 8
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)  # -> GlobalAveragePool
        return self.fc(torch.flatten(x, 1))


# ---------------------------------------------------------------------------------- inception_shapes
class Inception(nn.Module):
    """Four parallel branches joined by Concat on channels:
    1x1 conv | 3x3 conv | 5x5 conv (or dilated 3x3) | 3x3 AveragePool(stride 1, pad 1) -> 1x1 conv."""

    def __init__(self, cin, c1, c3, c5, cp, dilated=False):
        super().__init__()
        self.b1 = conv_bn(cin, c1, 1)
        self.b3 = conv_bn(cin, c3, 3)
        self.b5 = conv_bn(cin, c5, 3, dilation=2) if dilated else conv_bn(cin, c5, 5)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.bp = conv_bn(cin, cp, 1)

    def forward(self, x):
        return torch.cat([F.relu(self.b1(x)), F.relu(self.b3(x)), F.relu(self.b5(x)),
                          F.relu(self.bp(self.pool(x)))], 1)


class InceptionShapes(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)  # 64 -> 32
        self.inc1 = Inception(16, 8, 12, 8, 8)  # 32x32, 36 ch
        self.pool1 = nn.MaxPool2d(2)  # 32 -> 16
        self.inc2 = Inception(36, 16, 24, 16, 16, dilated=True)  # 16x16, 72 ch
        self.down = conv_bn(72, 64, 3, 2)  # strided conv, 16 -> 8
        self.gap = nn.AvgPool2d(8)  # a real AveragePool node, kernel = remaining 8x8
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.pool1(self.inc1(x))
        x = F.relu(self.down(self.inc2(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


# ------------------------------------------------------------------------------------- mobile_shapes
class SqueezeExcite(nn.Module):
    """GlobalAveragePool -> 1x1 conv -> Relu -> 1x1 conv -> HardSigmoid -> Mul with the input."""

    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cexp, cout, k, stride, se):
        super().__init__()
        self.expand = conv_bn(cin, cexp, 1)
        self.dw = conv_bn(cexp, cexp, k, stride, groups=cexp)  # depthwise, padded
        self.se = SqueezeExcite(cexp) if se else None
        self.project = conv_bn(cexp, cout, 1)
        self.act = nn.Hardswish()
        self.residual = cin == cout and stride == 1

    def forward(self, x):
        y = self.act(self.dw(self.act(self.expand(x))))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class MobileShapes(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2)  # 64 -> 32
        self.act = nn.Hardswish()
        self.dw0 = conv_bn(16, 16, 3, 1, groups=16)  # depthwise 3x3
        self.pw0 = conv_bn(16, 16, 1)  # pointwise
        self.b1 = InvertedResidual(16, 48, 24, 3, 2, se=True)  # 32 -> 16, stride-2 depthwise + SE
        self.b2 = InvertedResidual(24, 72, 24, 3, 1, se=False)  # residual Add
        self.b3 = InvertedResidual(24, 96, 40, 5, 2, se=True)  # 16 -> 8, 5x5 depthwise + SE
        self.head = conv_bn(40, 128, 1)
        self.fc = nn.Linear(128, n_classes)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = x + self.pw0(self.act(self.dw0(x)))
        x = self.b3(self.b2(self.b1(x)))
        x = self.act(self.head(x))
        x = F.adaptive_avg_pool2d(x, 1)  # -> GlobalAveragePool
        return self.fc(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------- captioner
class Captioner(nn.Module):
    """CNN -> image embedding (Gemm) -> LSTM over T steps -> Gemm per step -> logits [1, T, V].

    Step t's LSTM input is Concat(embedding, one-hot(t)); the sequence is built with cat/stack of
    the very same embedding (exported as Unsqueeze/Concat, never Expand/Tile).  The initial states
    are explicit zero buffers so the exporter needs no Shape-derived zeros.
    """

    def __init__(self, vocab: int, steps: int = 3, emb: int = 128, hidden: int = 96):
        super().__init__()
        self.steps, self.hidden, self.vocab = steps, hidden, vocab
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 48x144 -> 24x72
            nn.Conv2d(12, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 12x36
            nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 6x18
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 3x9
        )
        self.embed = nn.Linear(32 * 3 * 9, emb)
        self.lstm = nn.LSTM(emb + steps, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.register_buffer("step_codes", torch.eye(steps).unsqueeze(1), persistent=False)  # [T,1,T]
        # persistent: exported as an initializer; a non-persistent zero constant gets Shape+Expand
        self.register_buffer("h0", torch.zeros(1, 1, hidden))

    def forward(self, x):
        b = int(x.shape[0])  # a Python constant while tracing: reshapes need no Shape op
        e = F.relu(self.embed(torch.flatten(self.features(x), 1)))  # [B, E]
        if b == 1:  # export / inference path: constants only, no Expand
            seq = torch.stack([torch.cat([e, self.step_codes[t]], 1) for t in range(self.steps)], 1)
            h0 = self.h0
        else:  # training path (batches); same numbers
            seq = torch.stack([torch.cat([e, self.step_codes[t].expand(b, -1)], 1)
                               for t in range(self.steps)], 1)
            h0 = self.h0.expand(1, b, self.hidden).contiguous()
        y, _ = self.lstm(seq, (h0, h0))  # [B, T, H]
        return self.out(y.reshape(b * self.steps, self.hidden)).reshape(b, self.steps, self.vocab)
