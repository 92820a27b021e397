"""Real bugs, as people reported them in public, that the ladder can name before training.

Each data set or model below reproduces one report in miniature (the thread is cited where the
bug is planted); tests/test_zoo_real_init.py asserts the stage, the verdict and the words of the
cause. The healthy cases are built the way libraries build them (a ResNet stem with batchnorm,
an ``nn.TransformerEncoder`` over tokens, scikit-learn's tabular data, mixup soft labels) and
must raise no failure.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

# ---------------------------------------------------------------- data


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(
    n_train: int = 512, n_val: int = 256, dim: int = 16, classes: int = 4, seed: int = 0
) -> tuple:
    """Gaussian blobs, standardised: easy and healthy."""
    g = _gen(seed)
    centres = torch.randn(classes, dim, generator=g)

    def draw(n: int):
        y = torch.randint(classes, (n,), generator=g)
        return centres[y] + 0.5 * torch.randn(n, dim, generator=g), y

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def binary_blobs(column: bool = False, seed: int = 0, **kw) -> tuple:
    """Two blobs with float 0./1. targets, the way BCEWithLogitsLoss wants them; ``column``
    makes them (1,) per sample."""
    train, val = blobs(classes=2, seed=seed, **kw)

    def conv(ds):
        x, y = ds.tensors
        y = y.float()
        return TensorDataset(x, y[:, None] if column else y)

    return conv(train), conv(val)


def regression(n_train: int = 512, n_val: int = 256, dim: int = 8, scale: float = 1.0, seed=0):
    """Linear targets, standardised (half of them negative) unless ``scale`` stretches them."""
    g = _gen(seed)
    w = torch.randn(dim, generator=g) / math.sqrt(dim)

    def draw(n: int):
        x = torch.randn(n, dim, generator=g)
        return x, scale * (x @ w + 0.1 * torch.randn(n, generator=g))

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def regression_unscaled(**kw) -> tuple:
    """Targets in the tens (a count, a price) fed to a model that ends in a sigmoid.
    https://github.com/jsyoon0823/Time-series-prediction/issues/3"""
    train, val = regression(scale=20.0, **kw)
    shift = lambda ds: TensorDataset(ds.tensors[0], ds.tensors[1] + 40.0)  # noqa: E731
    return shift(train), shift(val)


def images(n_train: int = 256, n_val: int = 128, size: int = 12, seed: int = 0, raw=False):
    """Bright squares vs bright crosses on dark noise; pixels on a 0-255 scale when ``raw``,
    else in [0, 1]."""
    g = _gen(seed)

    def draw(n: int):
        y = torch.randint(2, (n,), generator=g)
        img = 40 * torch.rand(n, 1, size, size, generator=g)
        c = size // 2
        img[y == 0, :, c - 3 : c + 3, c - 3 : c + 3] += 180
        img[y == 1, :, c - 1 : c + 1, :] += 180
        img[y == 1, :, :, c - 1 : c + 1] += 180
        img = img.clamp(0, 255)
        return (img if raw else img / 255.0), y

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def val_not_normalised(**kw) -> tuple:
    """Train standardised with its own mean and std; val left on the raw 0-255 scale — the
    normalisation passed to the train set only.
    https://github.com/PolymathicAI/the_well/issues/68"""
    train, val = images(raw=True, **kw)
    x = train.tensors[0]
    mean, std = x.mean(), x.std()
    return TensorDataset((x - mean) / std, train.tensors[1]), val


def raw_pixels(**kw) -> tuple:
    """Both splits on the raw 0-255 scale: never divided by 255.
    https://github.com/www0wwwjs1/Matrix-Capsules-EM-Tensorflow/issues/51"""
    return images(raw=True, **kw)


def pixels_divided_twice(**kw) -> tuple:
    """Images already in [0, 1] (ToTensor divides by 255) divided by 255 again: every pixel
    in [0, 1/255]. https://github.com/facebookresearch/InterHand2.6M/issues/110 ("takes the
    pixel value to a very small value between 0 and 1/255"),
    https://github.com/SYSU-SAIL/SOF-VSR/issues/14 ("You normalize the LR tensors twice")"""
    train, val = images(**kw)
    return tuple(TensorDataset(ds.tensors[0] / 255.0, ds.tensors[1]) for ds in (train, val))


def float64_from_numpy(n_train: int = 512, n_val: int = 256, dim: int = 16, seed: int = 0):
    """Features made with numpy and wrapped with torch.from_numpy, which keeps numpy's
    float64: the float32 model fails on them. https://github.com/OUCMachineLearning/OUCML/issues/24
    (`torch.from_numpy(np.random.normal(0, 1, (num_examples, num_inputs)))`),
    https://github.com/theislab/scarches/issues/195"""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (4, dim))

    def draw(n: int):
        y = rng.integers(0, 4, n)
        x = centres[y] + 0.5 * rng.normal(0, 1, (n, dim))
        return torch.from_numpy(x), torch.from_numpy(y)

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def sorted_then_last_fifth_as_val(n: int = 1000, dim: int = 16, seed: int = 0) -> tuple:
    """Five classes stored sorted by label, the last 20% taken as val without shuffling: val
    is the whole of class 4, which train never sees. https://github.com/keras-team/keras/issues/8346
    ("splitting 20% of data for validation takes the last 20% of the data which is in this case
    the whole class 5"), https://github.com/zalandoresearch/fashion-mnist/issues/3 ("the
    validation set only contain 0 as labels"), https://github.com/yhenon/pytorch-retinanet/issues/16
    ("the training dataset had classes 1:200 and validation had 201:255")"""
    g = _gen(seed)
    centres = torch.randn(5, dim, generator=g)
    y = torch.arange(5).repeat_interleave(n // 5)
    x = centres[y] + 0.5 * torch.randn(len(y), dim, generator=g)
    cut = int(0.8 * len(y))
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def regression_val_targets_unscaled(**kw) -> tuple:
    """Train targets standardised with their mean and spread, val's left in raw units: the
    scaling was fitted and applied to one split. https://github.com/skorch-dev/skorch/issues/1012
    ("weird valid loss when re-scaling y"), https://github.com/Nixtla/neuralforecast/issues/651
    (validation loss computed without scaling back)"""
    train, val = regression(scale=300.0, **kw)
    y = train.tensors[1]
    return TensorDataset(train.tensors[0], (y - y.mean()) / y.std()), val


def tokens(
    n_train: int = 256, n_val: int = 128, seq: int = 12, vocab: int = 40, classes: int = 4, seed=0
):
    """Token sequences whose class is the most frequent 'keyword' token (ids 1..classes)."""
    g = _gen(seed)

    def draw(n: int):
        x = torch.randint(classes + 1, vocab, (n, seq), generator=g)
        y = torch.randint(classes, (n,), generator=g)
        pos = torch.randint(seq, (n, 3), generator=g)
        x.scatter_(1, pos, (y + 1)[:, None].expand(-1, 3))
        return x, y

    return TensorDataset(*draw(n_train)), TensorDataset(*draw(n_val))


def breast_cancer(scaled: bool = True, column: bool = True, seed: int = 0) -> tuple:
    """scikit-learn's breast cancer table, standardised with the train statistics (or raw),
    float 0./1. targets for one logit."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)
    order = torch.randperm(len(x), generator=_gen(seed))
    val, train = order[:114], order[114:]
    if scaled:
        mean, std = x[train].mean(0), x[train].std(0)
        x = (x - mean) / std
    if column:
        y = y[:, None]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def digits_mixup(alpha: float = 0.4, seed: int = 0) -> tuple:
    """scikit-learn's digits with mixup on train: inputs and one-hot labels mixed pairwise,
    so the targets are class probabilities (soft labels), which CrossEntropyLoss accepts."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = _gen(seed)
    order = torch.randperm(len(x), generator=g)
    val, train = order[:360], order[360:]
    xt, yt = x[train], F.one_hot(y[train], 10).float()
    lam = torch.distributions.Beta(alpha, alpha).sample((len(xt), 1))
    partner = torch.randperm(len(xt), generator=g)
    xm = lam * xt + (1 - lam) * xt[partner]
    ym = lam * yt + (1 - lam) * yt[partner]
    return TensorDataset(xm, ym), TensorDataset(x[val], y[val])


# ---------------------------------------------------------------- models


class MLP(nn.Module):
    """An MLP with the last activation people put on it by mistake (``final``)."""

    def __init__(
        self,
        in_dim: int = 16,
        hidden: int = 32,
        outputs: int = 4,
        final: str | None = None,
        act: str = "relu",
        squeeze: bool = False,
    ):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.ReLU() if act == "relu" else nn.Tanh()
        self.fc2 = nn.Linear(hidden, outputs)
        self.final = final
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(x.flatten(1))))
        if self.final == "softmax":
            out = F.softmax(out, dim=1)
        elif self.final == "log_softmax":
            out = F.log_softmax(out, dim=1)
        elif self.final == "sigmoid":
            out = torch.sigmoid(out)
        elif self.final == "relu":
            out = torch.relu(out)
        return out.squeeze(-1) if self.squeeze else out


class SoftmaxHead(MLP):
    """``nn.Softmax`` as the last layer of the classifier, then CrossEntropyLoss.
    https://github.com/jindongwang/Deep-learning-activity-recognition/issues/10 (and
    https://github.com/ariecattan/SciCo/issues/2: 'bounds the minimum possible loss')"""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.head = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(super().forward(x))


def softmax_over_batch_policy(in_dim: int = 16, hidden: int = 32, classes: int = 4):
    """``nn.Softmax(dim=0)`` closing a Sequential fed batches: the probabilities run down the
    batch, not across the actions.
    https://github.com/DeepReinforcementLearning/DeepReinforcementLearningInAction/issues/32
    (the book's ch. 4 policy network, as printed), also https://github.com/Lackel/DPN/issues/1"""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, classes), nn.Softmax(dim=0)
    )


class LogSoftmaxOverBatch(MLP):
    """``LogSoftmax(dim=0)`` on an (N, C) output into NLLLoss: the log-probabilities of each
    class over the batch. https://github.com/EasonApolo/mstn/issues/5 ('as the input is N*C, why
    is the Softmax applied to the 0-dimension?'), https://github.com/d2l-ai/d2l-en/pull/2274"""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.head = nn.LogSoftmax(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(super().forward(x))


class SigmoidLogit(MLP):
    """``nn.Sequential(nn.Linear(dim, 1), nn.Sigmoid())`` fed to BCEWithLogitsLoss.
    https://github.com/cvg/glue-factory/issues/89, https://github.com/yudi-mars/daisyRec/pull/15
    ('Otherwise loss does not converge')"""

    def __init__(self, in_dim: int = 16, hidden: int = 32):
        super().__init__(in_dim=in_dim, hidden=hidden, outputs=1)
        self.out = nn.Sequential(self.fc2, nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc1(x))).squeeze(-1)


class Inception(MLP):
    """Returns (logits, aux_logits) in train and eval mode, like inception_v3 with aux_logits.
    https://github.com/NVIDIA/apex/issues/27 ('tuple' object has no attribute 'log_softmax')"""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.aux = nn.Linear(kw.get("in_dim", 16), kw.get("outputs", 4))

    def forward(self, x: torch.Tensor):
        return super().forward(x), self.aux(x)


class FunctionalDropout(MLP):
    """``F.dropout(h, 0.5)`` in forward: training defaults to True, so it stays on in eval.
    https://github.com/pytorch/pytorch/issues/26338, https://github.com/rixwew/pytorch-fm/issues/21"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.act(self.fc1(x)), p=0.5)
        return self.fc2(h)


class ZeroInitReLU(MLP):
    """A zero-initialised linear layer without bias before a ReLU: every unit is 0 and no
    gradient flows. https://github.com/lucidrains/deep-cross-attention/issues/2"""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.fc1 = nn.Linear(kw.get("in_dim", 16), kw.get("hidden", 32), bias=False)
        nn.init.zeros_(self.fc1.weight)


class NegativeBiasReLU(MLP):
    """Bias initialised large and negative before a ReLU: most units never fire.
    https://github.com/facebookresearch/dlrm/pull/358"""

    def __init__(self, **kw):
        super().__init__(**kw)
        with torch.no_grad():
            self.fc1.bias.fill_(-4.0)
            self.fc1.bias[:4] = 0.0


class BigInitTanh(nn.Module):
    """A tanh MLP initialised from N(0, 1) without the 1/sqrt(fan_in) scale: pre-activations in
    the tens, tanh pinned at ±1 (makemore part 3; https://github.com/karpathy/nn-zero-to-hero/issues/66)"""

    def __init__(self, in_dim: int = 16, hidden: int = 64, outputs: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(hidden, outputs)
        with torch.no_grad():
            self.fc1.weight.normal_(0, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def last_layer_sgd(params, lr: float = 0.01, momentum: float = 0.9):
    """The optimizer built on the classifier only (optim.SGD(model.fc.parameters(), ...)):
    the rest of the network gets gradients and never changes.
    https://github.com/pytorch/tutorials/pull/1455, https://github.com/zjunlp/HVPNeT/issues/5"""
    return torch.optim.SGD(list(params)[-2:], lr=lr, momentum=momentum)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv-bn-relu-conv-bn, identity or 1×1 downsample."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetStem(nn.Module):
    """A ResNet cut to its first blocks, initialised the way torchvision does (Kaiming normal
    for convs, BN weight 1 / bias 0)."""

    def __init__(self, in_channels: int = 1, classes: int = 2, width: int = 16):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            BasicBlock(width, width),
            BasicBlock(width, 2 * width, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))


class FrozenBackbone(ResNetStem):
    """Feature extraction left on while training from scratch: the backbone is frozen although
    no pretrained weights were loaded. https://github.com/pytorch/vision/issues/3394"""

    def __init__(self, freeze_backbone: bool = True, **kw):
        super().__init__(**kw)
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad = False


class TokenTransformer(nn.Module):
    """Embedding + learned positions + ``nn.TransformerEncoder`` (batch_first) + mean pool."""

    def __init__(
        self,
        vocab: int = 40,
        dim: int = 32,
        classes: int = 4,
        seq: int = 12,
        final: str | None = None,
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, seq, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)
        self.final = final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.pos[:, : x.shape[1]])
        logits = self.head(h.mean(1))
        return F.softmax(logits, dim=1) if self.final == "softmax" else logits


class TokenLSTM(nn.Module):
    """``nn.LSTM`` built with the default batch_first=False but fed (batch, seq, emb): it runs
    along the batch, so each sample's output depends on the samples before it.
    https://github.com/salesforce/cove/issues/10, https://github.com/yunjey/pytorch-tutorial/issues/73"""

    def __init__(self, vocab: int = 40, dim: int = 16, classes: int = 4, batch_first: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=batch_first)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))  # (B, T, E) read as (T, B, E) unless batch_first
        return self.head(out[:, -1])


class TokenViewMixer(nn.Module):
    """(B, T, E) embeddings reshaped to (T, B, E) with ``view`` instead of ``transpose`` before
    a sequence-first pooling: the rows now hold pieces of several samples.
    https://github.com/TobiasLee/Chinese-Hip-pop-Generation/pull/8,
    https://github.com/vitrioil/Speech-Separation/issues/4"""

    def __init__(self, vocab: int = 40, dim: int = 16, classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape
        e = self.embed(x)  # (B, T, E)
        seq_first = e.view(t, b, -1)  # meant e.transpose(0, 1)
        pooled = torch.relu(self.proj(seq_first)).mean(0)  # (B, E), over "time"
        return self.head(pooled)
