"""fastadv: fast adversarial training (AT, FAT, TRADES, MART, GAIRAT, GAIR-FAT, ...) on fused kernels,
AutoAttack evaluation, the CIFS and DS-Net architectures and the SAMMD detector."""
__version__ = "0.1.0"

from . import ops  # noqa: F401  (registers torch.ops.fastadv.*)
from . import attacks, data, detect, losses, models  # noqa: E402,F401
from .evaluation import evaluate  # noqa: E402,F401
from .training import Trainer, TrainResult, train  # noqa: E402,F401
