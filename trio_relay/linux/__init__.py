"""Linux process plumbing with no Trio: /proc, the death signal, session sweeps, and who is
behind a socket."""
