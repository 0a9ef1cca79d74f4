"""Optional dependencies: the pip extra each comes with, and the message a missing one gets.

A data set, a plot or the language server that needs a package dslc does not depend on imports it where it is used;
when it is missing, the error names the package and the extra to install (`pip install 'dslc[data]'`), never a
traceback: a missing optional package is the installation's choice, not a bug in dslc.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dslc.errors import Diagnostic, DslcError

# top-level module -> (the package pip installs, the extra of dslc that brings it, what needs it)
OPTIONAL = {
    "sklearn": ("scikit-learn", "data", "the digits and diabetes data sets"),
    "gymnasium": ("gymnasium", "data", "the CartPole data set"),
    "PIL": ("Pillow", "data", "image data sets"),
    "matplotlib": ("matplotlib", "plots", "curves.png and dslc plot"),
    "tensorboard": ("tensorboard", "plots", "TensorBoard logging"),
    "pygls": ("pygls", "lsp", "dslc lsp"),
    "lsprotocol": ("lsprotocol", "lsp", "dslc lsp"),
}


class MissingExtraError(DslcError):
    """An optional package is not installed: the message names it and the extra that brings it."""

    def __init__(self, module: str, needed_for: str | None = None):
        package, extra, purpose = OPTIONAL[module]
        self.module, self.package, self.extra = module, package, extra
        self.message = f"the package {package} is not installed (needed for {needed_for or purpose})"
        self.hint = f"install it with: pip install 'dslc[{extra}]'   (or: pip install {package})"
        super().__init__([Diagnostic(None, self.message, self.hint)])


def missing_extra(exc: BaseException) -> MissingExtraError | None:
    """The message for an ImportError of an optional package (None for any other exception)."""
    if not isinstance(exc, ImportError) or not exc.name:
        return None
    top = exc.name.partition(".")[0]
    if top not in OPTIONAL:
        return None
    return MissingExtraError(top)


def require(module: str, needed_for: str | None = None) -> ModuleType:
    """Import the optional `module` (`matplotlib`), or raise the error naming its package and extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.partition(".")[0] != module.partition(".")[0]:
            raise  # the package is there but broken: not a missing extra
        raise MissingExtraError(module.partition(".")[0], needed_for) from None


def available(module: str) -> bool:
    """Whether the optional `module` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
