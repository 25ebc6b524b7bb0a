"""The LipschitzLR math: bounds of the loss (``bounds``), one description per loss (``losses``), the epoch's head statistics
(``statistics``), the learning-rate rules, one :class:`~lipschitz_lightning.math.rules.Rule`
entry each (``rules``), and the rollback guard's loss test (``guard``).

Plain functions of numbers and tensors; nothing here imports Lightning.
"""

from lipschitz_lightning.math.bounds import *  # noqa: F401,F403
from lipschitz_lightning.math.bounds import __all__ as _bounds_all
from lipschitz_lightning.math.losses import *  # noqa: F401,F403
from lipschitz_lightning.math.losses import __all__ as _losses_all
from lipschitz_lightning.math.statistics import *  # noqa: F401,F403
from lipschitz_lightning.math.statistics import __all__ as _statistics_all
from lipschitz_lightning.math.rules import *  # noqa: F401,F403
from lipschitz_lightning.math.rules import __all__ as _rules_all
from lipschitz_lightning.math.guard import *  # noqa: F401,F403
from lipschitz_lightning.math.guard import __all__ as _guard_all

__all__ = [*_bounds_all, *_losses_all, *_statistics_all, *_rules_all, *_guard_all]
