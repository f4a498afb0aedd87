"""Distribution: strategies, the process group from the launcher's environment, and launch."""

from hpctrain.distribute.strategy import MirroredStrategy, MultiWorkerMirroredStrategy, Strategy, get_strategy

__all__ = ["MirroredStrategy", "MultiWorkerMirroredStrategy", "Strategy", "get_strategy"]
