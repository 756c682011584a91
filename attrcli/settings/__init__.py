"""The grid settings: GridPG, DiFull and DiPart (SPEC §1), and GridPG on a rescaled grid."""

from attrcli.settings.base import SETTINGS, GridSetting, Targets, create_setting
from attrcli.settings.grid import DiFull, DiPart, GridPG, GridPGRescaled

__all__ = ["SETTINGS", "DiFull", "DiPart", "GridPG", "GridPGRescaled", "GridSetting", "Targets", "create_setting"]
