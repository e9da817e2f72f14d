"""What every stage uses and that knows nothing of networks or draws: file and TOML lookup (``checks``),
intervals for probabilities and quantiles, time zones, tidy-table checks, output-folder safety, progress, versions.

Imports: ``bayesflex.errors`` only (see ARCHITECTURE.md).
"""
