"""ctm_core: Consistency Trajectory Models (Kim et al. 2023) for 1D distributions.

`ctm_core.load(path)` gives a trained model to sample from (`ctm_core.model`).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Model", "load"]

if TYPE_CHECKING:
    from ctm_core.model import Model, load


def __getattr__(name: str) -> Any:
    # Imported on first use: `import ctm_core.config` should not pull in torch's runtime and more.
    if name in __all__:
        from ctm_core import model

        return getattr(model, name)
    raise AttributeError(f"module 'ctm_core' has no attribute {name!r}")
