"""Training: config checks, fitting and testing one run, its callbacks, its run folder's safety, resume, sweeps."""
