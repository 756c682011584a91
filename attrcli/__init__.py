"""attrcli: evaluate attribution methods on GridPG, DiFull and DiPart (Rao, Böhle & Schiele, CVPR 2022)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
