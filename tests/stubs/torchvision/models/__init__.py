"""Stand-in for ``torchvision.models``: Zennit (``zennit.torchvision``) imports two ResNet block classes for
isinstance checks in its ResNet canonizer, which the LRP parity tests never apply to a torchvision ResNet."""

from . import resnet  # noqa: F401
