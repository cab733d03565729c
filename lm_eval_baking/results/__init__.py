"""Reports and the CI gate: results files in, tables, plots and verdicts out. No torch."""
