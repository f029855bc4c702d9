"""voszoo: a modular benchmark library of semi-supervised video object segmentation architectures.

Importing this package is light: it imports no model file, initialises nothing and touches no file.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
