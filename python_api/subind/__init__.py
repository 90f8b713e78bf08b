"""subind: the Subtask Induction driver (discovery, transfer, experiments, CLI).

Thin by design: all kernel and subnetwork logic lives in ``subind_fast``.
The discovery/transfer driver and the ``subind`` CLI arrive with the
subnetwork and arithmetic-experiment issues."""
