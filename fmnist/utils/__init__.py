"""What every layer shares: the one-line error type, value and folder checks, atomic files, config composition."""
