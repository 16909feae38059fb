"""Detecting adversarial data with two-sample tests: :class:`SAMMD` (the semantic-aware MMD
test) and the plain :class:`GaussianMMD` baseline; :func:`detection_trials` measures a detector's
power and type-I error over repeated draws (what ``fastadv detect`` prints)."""
from .mmd import GaussianMMD, TestResult, mmd2_and_variance, permutation_test, wild_bootstrap
from .sammd import SAMMD, penultimate_features
from .trials import detection_trials

__all__ = ["SAMMD", "GaussianMMD", "TestResult", "penultimate_features", "mmd2_and_variance",
           "wild_bootstrap", "permutation_test", "detection_trials"]
