"""The model zoo: WRPN versions of a small 28x28 CNN, ResNet-18/34 and an AlexNet-style network.

Every model follows the paper's recipe: the first convolution and the last linear layer keep full
precision weights; every other convolution / linear layer is a WRPNConv2d / WRPNLinear with
`wbits` weights; every hidden nonlinearity is a WRPNAct(`abits`); `width` multiplies every
layer's filter count except the classifier's outputs. Each quantized layer reads the output of a
WRPNAct (pooling sits before the activation quantizer, where it commutes with it), and is
followed by batch norm, so the compiler sees "quantize activation -> conv/dense -> batch norm".
"""

from functools import partial

from torch import nn

from ..errors import WrpnError
from .layers import WRPNAct, WRPNConv2d, WRPNLinear, check_width, widen
from .quantize import check_bits


class SmallCNN(nn.Module):
    """Three 3x3 convolutions (the last two quantized), two 2x2 max pools, global average pool, classifier."""

    def __init__(self, width, abits, wbits, num_classes, in_channels, image_size):
        super().__init__()
        c1, c2, c3 = widen(16, width), widen(32, width), widen(64, width)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.act1 = WRPNAct(abits)
        self.conv2 = WRPNConv2d(c1, c2, 3, padding=1, bias=False, wbits=wbits)
        self.bn2 = nn.BatchNorm2d(c2)
        self.act2 = WRPNAct(abits)
        self.conv3 = WRPNConv2d(c2, c3, 3, padding=1, bias=False, wbits=wbits)
        self.bn3 = nn.BatchNorm2d(c3)
        self.act3 = WRPNAct(abits)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x):
        x = self.act1(self.pool(self.bn1(self.conv1(x))))
        x = self.act2(self.pool(self.bn2(self.conv2(x))))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """ResNet basic block; its input is already a quantized activation, so both convs and the shortcut read it."""

    def __init__(self, in_planes, planes, stride, abits, wbits):
        super().__init__()
        self.conv1 = WRPNConv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False, wbits=wbits)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = WRPNAct(abits)
        self.conv2 = WRPNConv2d(planes, planes, 3, padding=1, bias=False, wbits=wbits)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                WRPNConv2d(in_planes, planes, 1, stride=stride, bias=False, wbits=wbits),
                nn.BatchNorm2d(planes),
            )
        self.act2 = WRPNAct(abits)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ImageNet-style ResNet (7x7/2 stem, 3x3/2 max pool, four stages, global average pool)."""

    def __init__(self, blocks, width, abits, wbits, num_classes, in_channels, image_size):
        super().__init__()
        stem = widen(64, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.act1 = WRPNAct(abits)
        stages, in_planes = [], stem
        for index, count in enumerate(blocks):
            planes = widen(64 * 2**index, width)
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(in_planes, planes, stride, abits, wbits))
                in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        x = self.act1(self.pool(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(x.mean(dim=(2, 3)))


def _alexnet_feature_size(image_size: int) -> int:
    size = (image_size + 2 * 2 - 11) // 4 + 1  # conv1 11x11/4, pad 2
    for _ in range(3):  # three 3x3/2 max pools; the 5x5 and 3x3 convs keep the size
        size = (size - 3) // 2 + 1
    return size


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al. 2012) with batch norm after every layer but the classifier, as WRPN trains it."""

    def __init__(self, width, abits, wbits, num_classes, in_channels, image_size):
        super().__init__()
        c1, c2, c3, c4, c5 = (widen(c, width) for c in (64, 192, 384, 256, 256))
        hidden = widen(4096, width)

        def pool():
            return nn.MaxPool2d(3, stride=2)

        def conv(cin, cout, kernel, padding):
            return WRPNConv2d(cin, cout, kernel, padding=padding, bias=False, wbits=wbits)

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 11, stride=4, padding=2, bias=False), nn.BatchNorm2d(c1), pool(), WRPNAct(abits),
            conv(c1, c2, 5, 2), nn.BatchNorm2d(c2), pool(), WRPNAct(abits),
            conv(c2, c3, 3, 1), nn.BatchNorm2d(c3), WRPNAct(abits),
            conv(c3, c4, 3, 1), nn.BatchNorm2d(c4), WRPNAct(abits),
            conv(c4, c5, 3, 1), nn.BatchNorm2d(c5), pool(), WRPNAct(abits),
        )
        size = _alexnet_feature_size(image_size)
        self.classifier = nn.Sequential(
            WRPNLinear(c5 * size * size, hidden, bias=False, wbits=wbits), nn.BatchNorm1d(hidden), WRPNAct(abits),
            WRPNLinear(hidden, hidden, bias=False, wbits=wbits), nn.BatchNorm1d(hidden), WRPNAct(abits),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# name -> (constructor, natural input size, smallest input size the architecture accepts)
_ZOO = {
    "smallcnn": (SmallCNN, 28, 4),
    "resnet18": (partial(ResNet, (2, 2, 2, 2)), 224, 32),
    "resnet34": (partial(ResNet, (3, 4, 6, 3)), 224, 32),
    "alexnet": (AlexNet, 224, 63),
}
MODEL_NAMES = tuple(_ZOO)


def default_image_size(name: str) -> int:
    """The input size a zoo model is designed for (28 for smallcnn, 224 for the ImageNet models)."""
    return _entry(name)[1]


def _entry(name):
    if name not in _ZOO:
        raise WrpnError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _ZOO[name]


def _check_positive_int(value, what, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WrpnError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def build_model(name, width=1.0, abits=32, wbits=32, num_classes=10, in_channels=1, image_size=None) -> nn.Module:
    """A freshly initialized zoo model; image_size=None means the model's natural size (default_image_size)."""
    constructor, natural_size, min_size = _entry(name)
    image_size = natural_size if image_size is None else image_size
    return constructor(
        width=check_width(width),
        abits=check_bits(abits, "activation bits"),
        wbits=check_bits(wbits, "weight bits"),
        num_classes=_check_positive_int(num_classes, "number of classes", 2),
        in_channels=_check_positive_int(in_channels, "input channels"),
        image_size=_check_positive_int(image_size, f"image size for {name}", min_size),
    )
