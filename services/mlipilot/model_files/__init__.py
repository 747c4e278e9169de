"""Model files that cross a boundary: an allow-listed configuration plus tensors, no pickles."""

from mlipilot.model_files.config import ModelFileError
from mlipilot.model_files.package import (
    PACKAGE_NAME,
    read_package,
    write_mace_file,
    write_package,
)

__all__ = ["PACKAGE_NAME", "ModelFileError", "read_package", "write_mace_file", "write_package"]
