"""The callbacks long stages report through, shared by every layer (no imports)."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(label, done, total)``: ``done`` of ``total`` units of the work named ``label``.
Progress = Callable[[str, int, int], None]
#: ``log(line)``: one line for the person running the command.
Log = Callable[[str], None]
