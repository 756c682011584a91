"""attrcli scale commands."""
