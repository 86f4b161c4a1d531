"""Scripts that collect the committed training results of bench/results/training (run as files)."""
