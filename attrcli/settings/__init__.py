"""The three grid settings: GridPG, DiFull and DiPart (SPEC §1)."""

from attrcli.settings.base import SETTINGS, GridSetting, Targets, create_setting
from attrcli.settings.grid import DiFull, DiPart, GridPG

__all__ = ["SETTINGS", "DiFull", "DiPart", "GridPG", "GridSetting", "Targets", "create_setting"]
