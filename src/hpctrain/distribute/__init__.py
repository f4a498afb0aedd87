"""Distribution: strategies, the process group from the launcher's environment, and launch."""

from hpctrain.distribute.pipeline import PipelineStrategy
from hpctrain.distribute.strategy import MirroredStrategy, MultiWorkerMirroredStrategy, Strategy, get_strategy

__all__ = ["MirroredStrategy", "MultiWorkerMirroredStrategy", "PipelineStrategy", "Strategy", "get_strategy"]
