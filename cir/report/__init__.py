"""`python -m cir.report DIR... [--out FILE] [--tensorboard DIR]`: every evaluation under some folders as one table,
next to the paper's numbers (paper_numbers.csv, shipped with the package) and the difference."""
