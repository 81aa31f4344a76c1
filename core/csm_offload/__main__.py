"""`python -m csm_offload` is the `csm-offload` command."""

from .cli import main

main()
