"""fastadv: fast, exact adversarial training (fused kernels, early-stopped PGD with compaction)."""
__version__ = "0.1.0"

from . import ops  # noqa: F401  (registers torch.ops.fastadv.*)
