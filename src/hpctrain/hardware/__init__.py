"""What the machine is and the choices made from it, recorded in one :class:`Plan`."""

from hpctrain.hardware.cpu import physical_core_count
from hpctrain.hardware.plan import Plan, make_plan

__all__ = ["Plan", "make_plan", "physical_core_count"]
