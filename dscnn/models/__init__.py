"""Registry models; importing this package registers every entrypoint."""

from dscnn.models import repvgg  # noqa: F401
