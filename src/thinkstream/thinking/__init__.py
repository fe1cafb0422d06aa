"""Think while reading: reasoning units that run concurrently with a session's streaming
input (position layouts, input units, the per-session controller)."""

from thinkstream.thinking.config import DEPTHS, ThinkConfig
from thinkstream.thinking.layouts import LAYOUTS, Layout
from thinkstream.thinking.units import UnitPolicy

__all__ = ["DEPTHS", "LAYOUTS", "Layout", "ThinkConfig", "UnitPolicy"]
