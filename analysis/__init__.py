"""eightfold analysis: collect results, fit power laws, multipliers, plots."""
