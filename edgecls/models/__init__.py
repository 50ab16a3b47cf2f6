"""Reference architectures in plain torch (no torchvision or timm: they drag in a CUDA torch)."""

from edgecls.models.convnext import ConvNeXt
from edgecls.models.digits_cnn import DigitsCNN
from edgecls.models.efficientnet import EfficientNetB0
from edgecls.models.mobilenet_v2 import MobileNetV2
from edgecls.models.mobilevit import MobileViTXS
from edgecls.models.resnet import ResNet18
from edgecls.models.vit import ViTTiny

__all__ = ["ConvNeXt", "DigitsCNN", "EfficientNetB0", "MobileNetV2", "MobileViTXS", "ResNet18", "ViTTiny"]

# The reference nets benchmarks/ measure, by name: a 1000-class factory and its input size.
# Made in this order after torch.manual_seed(0), the weights are the same run after run.
REFERENCE_NETS = {
    "mobilenet_v2": (lambda: MobileNetV2(num_classes=1000), 224),
    "resnet18": (lambda: ResNet18(num_classes=1000), 224),
    "vit_tiny": (lambda: ViTTiny(num_classes=1000), 224),
    "mobilevit_xs": (lambda: MobileViTXS(num_classes=1000), 256),  # 2x2 patches at 1/32: a multiple of 64
    "efficientnet_b0": (lambda: EfficientNetB0(num_classes=1000), 224),
    "convnext": (lambda: ConvNeXt(num_classes=1000), 224),
}
