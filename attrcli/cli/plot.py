"""attrcli plot commands."""
