"""Programs that run as the broker's children. They never import Trio or anything of ours
above wire/ (and linux/), so that each stays small beside the program it wraps."""
