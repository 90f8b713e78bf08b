"""What is done with a subnetwork once found: transfer into a fresh model
(transfer), the optimizers that leave its frozen weights untouched (optim),
subnetworks chosen without training (selection), and comparisons between
subnetworks (analysis).  The Subnetwork type itself is data
(subind_fast/subnetwork.py)."""
