"""``python -m subind …`` (what torchrun runs: ``torchrun … -m subind discover …``)."""
from .commands import main

raise SystemExit(main())
