"""Agent profiles: how one kind of agent CLI looks and wants to be typed to, as data.

:mod:`.profile` is the format (what the PTY worker reads); :mod:`.catalog` finds a profile
by name or command, among the built-ins (``builtin/*.toml``) and the user's TOML files.
"""
