"""Former name of :mod:`pruning_utils.measure`, kept until every import uses the new name."""

from pruning_utils.measure import *  # noqa: F403
from pruning_utils.measure import __all__  # noqa: F401
