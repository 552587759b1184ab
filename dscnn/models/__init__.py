"""Registry models; importing this package registers every entrypoint."""

from dscnn.models import dscnn as dscnn_models  # noqa: F401
from dscnn.models import (
    falconnet,  # noqa: F401
    fasternet,  # noqa: F401
    repvgg,  # noqa: F401
    resnet_cifar,  # noqa: F401
)
