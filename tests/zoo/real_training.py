"""Training bugs as people reported them in public, and healthy models built like library ones.

Each bug is a tiny CPU case written from the report cited beside it (our own code, not the
reporter's); tests/test_zoo_real_training.py asserts the stage that catches it and the words of
the cause its verdict must name. The healthy models (a ResNet-style net with batchnorm cut to
its first blocks, an nn.TransformerEncoder over tokens, a model over 1M parameters) must get no
failure from overfit_one, overfit_few and generalize.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from zoo import MLP, blobs

# ---------------------------------------------------------------- data


def blobs10(**kw):
    """Ten classes: a softmax floor ln(1 + 9/e) = 1.46 far above 0."""
    kw.setdefault("classes", 10)
    return blobs(**kw)


def binary_blobs(n_train: int = 512, n_val: int = 256, dim: int = 16, seed: int = 0):
    """Two blobs with float 0/1 targets shaped like a one-logit output, (B,)."""
    train, val = blobs(n_train=n_train, n_val=n_val, dim=dim, classes=2, seed=seed)
    return (
        TensorDataset(train.tensors[0], train.tensors[1].float()),
        TensorDataset(val.tensors[0], val.tensors[1].float()),
    )


def standardized_regression(n_train: int = 512, n_val: int = 256, dim: int = 8, seed: int = 0):
    """Targets standardised to mean 0: half of them negative, as after the usual scaler."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)

    def draw(n: int):
        x = torch.randn(n, dim, generator=g)
        y = x @ w + 0.1 * torch.randn(n, generator=g)
        return x, (y - y.mean()) / y.std()

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def blobs_scaled_down_twice(**kw):
    """Features divided by 255 twice over (a [0, 1] scaling applied on top of one already
    done, as in https://github.com/SYSU-SAIL/SOF-VSR/issues/14 and
    https://github.com/facebookresearch/InterHand2.6M/issues/110, taken to where the net can
    no longer tell samples apart)."""
    train, val = blobs(**kw)
    return tuple(TensorDataset(ds.tensors[0] / 255.0 / 255.0, ds.tensors[1]) for ds in (train, val))


def blobs_train_labels_shuffled(**kw):
    """The train labels shuffled on their own, apart from the inputs (two shuffles)."""
    train, val = blobs(**kw)
    x, y = train.tensors
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    return TensorDataset(x, y[perm]), val


class OffByOne(Dataset):
    """``__getitem__`` reads the label of the next row: labels[i + 1] for inputs[i]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[(i + 1) % len(self.y)]


def blobs_label_off_by_one(**kw):
    train, val = blobs(**kw)
    return OffByOne(*train.tensors), OffByOne(*val.tensors)


def token_sequences(
    n_train: int = 512, n_val: int = 256, length: int = 12, vocab: int = 50, classes: int = 4
):
    """Token ids whose class decides which part of the vocabulary they mostly come from."""
    g = torch.Generator().manual_seed(0)
    band = vocab // classes

    def draw(n: int):
        y = torch.randint(classes, (n,), generator=g)
        own = y.unsqueeze(1) * band + torch.randint(band, (n, length), generator=g)
        noise = torch.randint(vocab, (n, length), generator=g)
        pick = torch.rand(n, length, generator=g) < 0.7
        return torch.where(pick, own, noise), y

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def blob_images(n_train: int = 384, n_val: int = 192, classes: int = 4, size: int = 16):
    """3-channel images: a class-coloured bright square at a class-dependent place, plus noise."""
    g = torch.Generator().manual_seed(0)

    def draw(n: int):
        y = torch.randint(classes, (n,), generator=g)
        x = 0.3 * torch.randn(n, 3, size, size, generator=g)
        for i, c in enumerate(y.tolist()):
            r, k = 2 + 3 * c, c % 3
            x[i, k, r : r + 5, r : r + 5] += 2.0
        return x, y

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


# ---------------------------------------------------------------- bugs


class SoftmaxMLP(MLP):
    """Returns probabilities: a softmax as the last layer (then NLLLoss or CrossEntropyLoss)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=1)


class SigmoidLogit(nn.Module):
    """One logit squeezed through a sigmoid — before BCEWithLogitsLoss, which has its own."""

    def __init__(self, in_dim: int = 16, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x)).squeeze(-1)


class ReluRegressor(nn.Module):
    """A regression head that ends in nn.ReLU(): outputs can never go below 0."""

    def __init__(self, in_dim: int = 8, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class FrozenMLP(MLP):
    """Every parameter frozen (a backbone frozen, and the new head with it)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.requires_grad_(False)


class NumpyInitMLP(MLP):
    """Weights drawn from numpy's global generator, which torch.manual_seed does not seed."""

    def __init__(self, **kw):
        super().__init__(**kw)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    w = np.random.normal(0, 1 / np.sqrt(m.in_features), tuple(m.weight.shape))
                    m.weight.copy_(torch.from_numpy(w))


# ---------------------------------------------------------------- healthy, built like libraries


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv-bn-relu-conv-bn plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetStem(nn.Module):
    """A ResNet-18 cut to its stem and first two stages, with kaiming init like torchvision."""

    def __init__(self, classes: int = 4, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(
            BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TokenTransformer(nn.Module):
    """Embedding + learned positions + nn.TransformerEncoder + mean pool + linear head."""

    def __init__(self, vocab: int = 50, length: int = 12, d: int = 32, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, d))
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens) + self.pos[:, : tokens.shape[1]])
        return self.head(h.mean(1))


class WideMLP(nn.Module):
    """Over a million parameters: 64 → 1024 → 1024 → classes."""

    def __init__(self, in_dim: int = 64, hidden: int = 1024, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def digits(val_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8×8 handwritten digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(y) * val_fraction)
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class MLPRegressor(nn.Module):
    """A plain ReLU MLP with a linear output: healthy, until the learning rate kills its units."""

    def __init__(self, in_dim: int = 8, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
