"""How an output is graded: error metrics, outcomes, the stability allowance and verdicts."""
