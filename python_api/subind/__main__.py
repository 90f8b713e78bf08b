"""``python -m subind …`` (what torchrun runs: ``torchrun … -m subind discover …``)."""
from .cli import main

raise SystemExit(main())
