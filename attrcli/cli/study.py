"""attrcli study commands."""
