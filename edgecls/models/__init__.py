"""Reference architectures in plain torch (no torchvision: it drags in a CUDA torch)."""

from edgecls.models.digits_cnn import DigitsCNN
from edgecls.models.mobilenet_v2 import MobileNetV2
from edgecls.models.resnet import ResNet18

__all__ = ["DigitsCNN", "MobileNetV2", "ResNet18"]
