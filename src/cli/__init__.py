"""What the command-line tools share: loading a config with its overrides (``config``), and models
from the hub that an offline machine may not reach (``hub``)."""
