"""ctm_core: Consistency Trajectory Models (Kim et al. 2023) for 1D distributions."""

__version__ = "0.1.0"
