"""The ways of running training steps, each behind the protocol of :class:`base.Executor`."""

from hpctrain.engine.executors.autograd import AutogradExecutor
from hpctrain.engine.executors.base import EpochSpan, Executor, StepContext
from hpctrain.engine.executors.cuda_graph import CudaGraphExecutor
from hpctrain.engine.executors.native_loop import NativeLoopExecutor
from hpctrain.engine.executors.static import StaticExecutor

__all__ = ["AutogradExecutor", "CudaGraphExecutor", "EpochSpan", "Executor", "NativeLoopExecutor", "StaticExecutor",
           "StepContext"]
