"""The ``fieldmon`` command: thin click wrappers over the Python API.

Heavy imports (torch, librosa) happen inside the commands so that
``fieldmon --help`` stays instant.
"""

from fieldmon.cli.main import main

__all__ = ["main"]
