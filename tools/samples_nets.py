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
    """Show-and-Tell-style captioner (CNN Fixations §III-D): the image embedding is the LSTM's input at step 0, the
    embedding of the word predicted at step t−1 its input at step t.

    CNN -> Gemm image embedding I -> LSTM step 0 (seq length 1, zero initial state) -> Gemm -> word 0;
    ArgMax(word 0 logits) -> Gather(word embedding table) -> LSTM step 1 (initial state = step 0's Y_h/Y_c) -> ...
    Each step is its own ONNX ``LSTM`` op (the decoder is unrolled because step t's input depends on step t−1's
    output); the output stacks the steps' logits, [1, T, V]. The word is fed back as an index (ArgMax), so
    no value of the image reaches step t through x_t: it arrives through m_{t−1} only, as in the paper.
    Training uses teacher forcing (``words``: the true previous words); export and inference feed back the
    greedy prediction. The initial states are an explicit zero buffer so the exporter needs no Shape-derived zeros.
    ``split`` / ``slots``: fixed connectivity masks (left/right image halves; a two-slot LSTM, see ``__init__``) so
    that the paper's LSTM backtrack of word t reaches the object word t names; ``density``/``prune``: magnitude
    pruning inside those masks.
    """

    def __init__(self, vocab: int, steps: int = 2, emb: int = 64, hidden: int = 64, density: float = 1.0,
                 prune: tuple[int, int] = (0, 0), split: bool = False, slots: bool = False):
        super().__init__()
        self.steps, self.hidden, self.vocab = steps, hidden, vocab
        self.density, self.prune, self._step = density, prune, 0
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 48x96 -> 24x48
            nn.Conv2d(12, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 12x24
            nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 6x12
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 3x6
        )
        self.embed = nn.Linear(32 * 3 * 6, emb)
        self.word = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        # persistent: exported as an initializer; a non-persistent zero constant gets Shape+Expand
        self.register_buffer("h0", torch.zeros(1, 1, hidden))
        self._masks: dict[str, torch.Tensor] = {}
        self._fixed: dict[str, torch.Tensor] = {}  # connectivity masks, fixed for the whole training
        if split:  # embedding units [0, emb/2) read the left half of the 3x6 feature grid, the others the right
            col = torch.arange(32 * 3 * 6) % 6
            self._fixed["embed.weight"] = ((col[None, :] < 3) == (torch.arange(emb)[:, None] < emb // 2)).float()
        if slots:
            # two slots of hidden units: A = [0, H/2) holds the object named now, B = [H/2, H) the object queued.
            # Gate rows (torch order i, f, g, o; H rows each) of slot A read input units [0, emb/2) (with split:
            # the left half of the image at step 0), those of slot B input units [emb/2, emb) (the right half);
            # through R, slot A reads only slot B of m_{t-1} (the queued object moves up) and slot B reads
            # nothing; the words are read from slot A only. Word t's trace: m_t A -> m_{t-1} B -> ... -> I.
            a_row = (torch.arange(4 * hidden) % hidden < hidden // 2)[:, None]
            a_in = (torch.arange(emb) < emb // 2)[None, :]
            a_hid = (torch.arange(hidden) < hidden // 2)[None, :]
            self._fixed["lstm.weight_ih_l0"] = (a_row == a_in).float()
            self._fixed["lstm.weight_hh_l0"] = (a_row & ~a_hid).float()
            self._fixed["out.weight"] = a_hid.expand(vocab, hidden).float()
        self._masks.update(self._fixed)

    def _allowed(self, name: str, w: torch.Tensor) -> torch.Tensor:
        m = self._fixed.get(name)
        return torch.ones_like(w) if m is None else m.to(w.device)

    def _sparse(self) -> dict[str, nn.Parameter]:
        return {"embed.weight": self.embed.weight, "lstm.weight_ih_l0": self.lstm.weight_ih_l0,
                "lstm.weight_hh_l0": self.lstm.weight_hh_l0, "out.weight": self.out.weight}

    @torch.no_grad()
    def _apply_masks(self) -> None:
        """Gradual magnitude pruning (Zhu & Gupta 2017) of the embedding, LSTM and output weights to
        ``density`` between training steps ``prune[0]`` and ``prune[1]``; pruned weights stay exactly zero."""
        s0, s1 = self.prune
        if self.training and self.density < 1.0 and s0 <= self._step <= s1 and (self._step - s0) % 25 == 0:
            keep = self.density + (1 - self.density) * (1 - (self._step - s0) / max(s1 - s0, 1)) ** 3
            for name, w in self._sparse().items():
                allowed = self._allowed(name, w)
                k = max(int(round(keep * float(allowed.sum()))), 1)
                thr = (w.abs() * allowed).flatten().topk(k).values[-1]
                self._masks[name] = allowed * (w.abs() >= thr).float()
        for name, w in self._sparse().items():
            if name in self._masks:
                w.mul_(self._masks[name].to(w.device))

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self._apply_masks()  # the exported weights are exactly the masked ones
        return self

    def forward(self, x, words=None):
        if self.training:
            self._apply_masks()
            self._step += 1
        b = int(x.shape[0])  # a Python constant while tracing: reshapes need no Shape op
        inp = F.relu(self.embed(torch.flatten(self.features(x), 1)))  # [B, E]: the image embedding I
        h = self.h0 if b == 1 else self.h0.expand(1, b, self.hidden).contiguous()
        c = h
        outs = []
        for t in range(self.steps):
            y, (h, c) = self.lstm(inp.unsqueeze(1), (h, c))  # one step: y [B, 1, H]
            logit = self.out(y[:, 0])
            outs.append(logit)
            if t + 1 < self.steps:
                prev = words[:, t] if words is not None else logit.argmax(-1)
                inp = self.word(prev)
        return torch.stack(outs, 1)  # [B, T, V]
